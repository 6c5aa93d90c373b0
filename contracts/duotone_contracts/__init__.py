"""Duotone's contracts: what the operator, the router and the tier runtime agree on.

The ImageModelDeployment API and its rules (`api`), the tier document (`tier`), the routing
table (`routing_table`), the Triton wire protocol (`triton`), the request limits check
(`limits`), Service ports and EndpointSlice reading (`services`), and the metric names and label
keys one program exports and another queries (`metrics`). Each contract has exactly one author
here; the three programs import these modules and never each other. Pure: pydantic only.
"""

__version__ = "0.1.0"
