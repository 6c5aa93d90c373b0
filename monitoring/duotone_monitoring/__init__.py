"""Duotone's monitoring as code: the Grafana dashboard and the Prometheus rules (recording
rules, SLO burn-rate and operator alerts) that `hack/generate.py` writes into the Helm chart.

They read metrics by the names in `duotone_contracts.metrics`, the same names the runtime, the
router and the operator export. Not part of any image.
"""
