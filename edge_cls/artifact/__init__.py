"""Artifacts: the manifest, its schema, integrity checks."""
