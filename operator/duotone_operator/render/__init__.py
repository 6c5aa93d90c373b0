"""Pure rendering: from a validated ImageModelDeployment to the manifests of its children.

No I/O, no clocks, no Kubernetes client: functions over typed values returning plain dicts,
so golden-file tests pin every field.
"""
