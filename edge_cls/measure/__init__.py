"""Torch-free tools that measure: latency, app figures, vendor tools, tegrastats, timing, tables."""
