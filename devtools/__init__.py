"""
Benchmark and test support for Clickpass, outside the installed package:
the benchmarks behind C{scripts/bench-balancer} and C{scripts/bench-worker},
a worker that also listens on TCP for them, and a tiny web application for
the balancer's tests. C{setup.py} does not ship it, and an import-linter
contract (pyproject.toml) forbids C{clickpass} from importing it.
"""
