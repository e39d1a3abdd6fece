"""Validate a request against a version's signature, at the edge, before anything is queued."""

from __future__ import annotations

import numpy as np

from converters.spec import Signature, TensorSpec
from serve.core.errors import invalid
from serve.core.types import InferRequest, Tensor


def describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} with shape {spec.shape}"


#: Datatypes that can hold NaN and infinities.
FLOATS = frozenset({"FP16", "FP32", "FP64"})


def validate(
    request: InferRequest, signature: Signature, allow_non_finite: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """The ONNX Runtime feeds for this request, and its row count (the batch dimension).

    NaN and infinities in a float input are refused unless the model allows them: a tree
    ensemble answers NaN with a confident prediction down its "missing" branch, which is a
    wrong answer for a client that sent NaN by mistake."""
    given: dict[str, Tensor] = {}
    for item in request.inputs:
        if item.name in given:
            raise invalid(f"input '{item.name}' is given twice")
        if signature.input(item.name) is None:
            raise invalid(f"unknown input '{item.name}'; inputs are: {_names(signature.inputs)}")
        given[item.name] = item
    feeds: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in signature.inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise invalid(
                f"missing input '{spec.name}' ({describe(spec)}); "
                f"inputs are: {_names(signature.inputs)}"
            )
        _check(spec, tensor)
        if (
            not allow_non_finite
            and spec.datatype in FLOATS
            and not tensor.finite
            and not np.isfinite(tensor.array).all()
        ):
            raise invalid(
                f"input '{spec.name}' holds NaN or infinite values; this model takes finite "
                "numbers only (its models[].allow_non_finite setting)"
            )
        batch = tensor.array.shape[0]
        if rows is not None and batch != rows:
            raise invalid(f"input '{spec.name}' has {batch} rows; other inputs have {rows}")
        rows = batch
        feeds[spec.name] = _feed(spec, tensor)
    _check_outputs(request, signature)
    assert rows is not None
    return feeds, rows


def _names(specs: list[TensorSpec]) -> str:
    return ", ".join(t.name for t in specs)


def _check(spec: TensorSpec, tensor: Tensor) -> None:
    shape = tensor.shape
    fits = (
        tensor.datatype == spec.datatype
        and len(shape) == len(spec.shape)
        and all(want in (-1, got) for want, got in zip(spec.shape, shape, strict=True))
    )
    if not fits:
        raise invalid(
            f"input '{spec.name}' must be {describe(spec)}; got {tensor.datatype} {shape}"
        )
    if shape[0] == 0:
        raise invalid(f"input '{spec.name}' has no rows")


def _feed(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    if spec.datatype != "BYTES":
        return tensor.array
    try:
        return np.vectorize(_text, otypes=[object])(tensor.array)
    except UnicodeDecodeError:
        raise invalid(
            f"input '{spec.name}': BYTES values must be UTF-8 text for this model"
        ) from None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_outputs(request: InferRequest, signature: Signature) -> None:
    """Each output asked for at most once: a repeated one would repeat its tensor in the
    answer, an amplification without bound."""
    seen: set[str] = set()
    for wanted in request.outputs or ():
        if signature.output(wanted.name) is None:
            raise invalid(
                f"unknown output '{wanted.name}'; outputs are: {_names(signature.outputs)}"
            )
        if wanted.name in seen:
            raise invalid(f"output '{wanted.name}' is asked for more than once")
        seen.add(wanted.name)
