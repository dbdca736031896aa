"""Scoring beyond one process, on an existing engine rather than one of our own.

:mod:`.ray_data`: Ray Data reads the image paths, decodes them in a CPU stage, and a pool of
actors (each holding one loaded artifact) classifies them; the records, the same as
``edge-cls predict --jsonl``, land in Parquet. ``pip install 'edge-cls[ray]'``.
"""
