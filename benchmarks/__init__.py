"""Ratio benchmarks of the gateway: `python -m benchmarks` (see benchmarks/__main__.py)."""
