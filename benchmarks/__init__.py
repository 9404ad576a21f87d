"""Benchmarks for membio-transport.

`run.py` is the single entry point; each suite module (`inprocess.py` today) measures one
family of workloads and returns `results.Row` objects that `run.py` reports together.
Nothing here is shipped: this directory is not part of the installed package.
"""
