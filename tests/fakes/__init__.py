"""Fakes of the operator's adapters, written against the same Protocols as the real ones.

Only for unit tests of the handlers and the autoscaler's shell; integration and e2e tests use
the real API server, tritonserver and Prometheus.
"""
