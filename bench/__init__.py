"""smolbox benchmark suite: real machines, repeated runs, medians (see bench/README.md).

Why a package and not a script: each measurement family lives in its own small
module (start latency, guest operations, lifecycle, density, host baselines), and
the test suite runs the whole thing end to end with ``python -m bench --quick``.
"""
