"""The operator's adapters: the Kubernetes API (`cluster` is its Protocol, `kubernetes` the
real client), metric sources for the autoscaler, and the operator's own Prometheus metrics.
Everything here is I/O; the decisions are in `plan`, `render` and `policy`."""
