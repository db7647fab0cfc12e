"""Benchmarks for lakefs-fuse (run them as scripts, e.g. ``python scripts/bench/embedded.py``)."""
