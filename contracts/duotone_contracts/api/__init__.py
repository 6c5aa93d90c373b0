"""The ImageModelDeployment API: typed spec and status, validation, and the generated CRD.

Pure: imports no Kopf, no Kubernetes client, no HTTP client and no torch (import-linter checks).
"""

from duotone_contracts.api.sources import ModelSource, parse_model_source
from duotone_contracts.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    TIER_NAMES,
    VERSION,
    FlagshipTierSpec,
    ImageModelDeployment,
    ImageModelDeploymentSpec,
    ImageModelDeploymentStatus,
    TierName,
    TierSpec,
)
from duotone_contracts.api.validation import FieldError, InvalidSpecError, parse_imd

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "TIER_NAMES",
    "VERSION",
    "FieldError",
    "FlagshipTierSpec",
    "ImageModelDeployment",
    "ImageModelDeploymentSpec",
    "ImageModelDeploymentStatus",
    "InvalidSpecError",
    "ModelSource",
    "TierName",
    "TierSpec",
    "parse_imd",
    "parse_model_source",
]
