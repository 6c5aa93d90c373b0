"""Pure decisions (retry backoff now; autoscaling and routing next). No I/O, time passed in."""
