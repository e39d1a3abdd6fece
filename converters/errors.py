"""Errors raised by the control plane (registry access, conversion, parity checks).

ModelgateError
 ├── RegistryError          where models come from: unknown model/version/alias, bad URI
 └── ConversionError        turning a model into ONNX
      ├── UnsupportedModelError   no converter for this estimator / flavor / file
      ├── UntrustedModelError     the file needs pickle (or an unreviewed skops type)
      └── ParityError             the ONNX model does not answer like the original
"""

from __future__ import annotations


class ModelgateError(Exception):
    """Base of every error modelgate raises on purpose."""


class RegistryError(ModelgateError):
    """A model, version or alias that the registry does not have, or a malformed model URI."""


class ConversionError(ModelgateError):
    """A model could not be turned into a verified ONNX artifact."""


class UnsupportedModelError(ConversionError):
    """No converter handles this kind of model."""


class UntrustedModelError(ConversionError):
    """Loading the model would run code from the file; the user has not said they trust it."""


class ParityError(ConversionError):
    """The converted model's answers differ from the original's beyond the tolerance."""
