"""Duotone operator: reconciles ImageModelDeployment resources into two-tier image serving.

Importing this package is cheap and pulls in neither Kopf nor the Kubernetes client;
those live behind the operator entry point.
"""

__version__ = "0.1.0"
