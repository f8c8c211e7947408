"""The benchmark rig: processes, rows, workloads, load generators and the report.

Run it through ``bench/run`` (see bench/README.md); ``bench/bench.py`` is the entry point.
"""
