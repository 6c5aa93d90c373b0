"""Pure decisions: autoscaling, retry backoff, watch freshness. No I/O; time is passed in."""
