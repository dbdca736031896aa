"""Torch-free evaluation, confidence fitting, drift checks and plots."""
