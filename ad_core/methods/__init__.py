"""Anomaly detection methods, one per file, registered by name (see `base.register`).

Importing this package imports every method module, which registers it.
"""

from ad_core.methods import isstad, ltad, patchcore, prn, reconpatch  # noqa: F401  (each registers itself)
from ad_core.methods.base import (
    AnomalyModel,
    ConfigError,
    MethodConfig,
    Prediction,
    ProgressFn,
    available_methods,
    get_method,
    register,
)

__all__ = [
    "AnomalyModel",
    "ConfigError",
    "MethodConfig",
    "Prediction",
    "ProgressFn",
    "available_methods",
    "get_method",
    "register",
]
