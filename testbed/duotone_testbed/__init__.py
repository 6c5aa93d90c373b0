"""Duotone's local test bed: the programs as local processes on loopback, for tests,
benchmarks and `make demo` (never in an image).

`local`: one tier runtime process (`LocalServer`) and process helpers; `stack`: tiers and a
router together (`LocalStack`, `LocalRouter`), configured exactly as the operator configures
them in a cluster; `clients`: ad-hoc Triton and metrics clients.
"""
