"""modelgate's control plane: registries, ONNX conversion, parity checks, artifacts."""

from converters.errors import (
    ConversionError,
    ModelgateError,
    ParityError,
    RegistryError,
    UnsupportedModelError,
    UntrustedModelError,
)

__all__ = [
    "ConversionError",
    "ModelgateError",
    "ParityError",
    "RegistryError",
    "UnsupportedModelError",
    "UntrustedModelError",
]
