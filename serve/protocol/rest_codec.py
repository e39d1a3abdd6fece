"""Open Inference Protocol REST bodies <-> `InferRequest` / `InferResponse`.

Both the JSON form and Triton's binary tensor extension: a body of N bytes of JSON (N given by the
`Inference-Header-Content-Length` header) followed by raw tensors, in input order, each input
carrying `parameters.binary_data_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serve.core import tensors
from serve.core.errors import ErrorCode, InferenceError, invalid
from serve.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from serve.core.validation import FLOATS

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class Limits:
    max_elements: int = 1 << 24  # per tensor


def decode_request(
    body: bytes, header_length: str | None, model: str, version: str | None, limits: Limits
) -> InferRequest:
    """The request, or a 4xx naming what was wrong. Its whole structure is checked before any
    limit (413) and before any tensor is built: a request that is malformed is a 400, whatever
    sizes it also declares."""
    json_part, binary = _split(body, header_length)
    doc = _parse_json(json_part)
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request must have a non-empty 'inputs' list")
    parameters = _parameters(doc.get("parameters"), "request")
    binary_output = _flag(parameters, "binary_data_output", "request") or False
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid(f"'id' must be a string; got {type(request_id).__name__}")
    outputs = _requested_outputs(doc.get("outputs"))
    specs = [_InputSpec.parse(i, item) for i, item in enumerate(raw_inputs)]
    inputs, consumed = [], 0
    for spec in specs:
        tensor, used = spec.decode(binary, consumed, limits)
        inputs.append(tensor)
        consumed += used
    if consumed != len(binary):
        raise invalid(f"binary data has {len(binary) - consumed} bytes no input claims")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=outputs,
        binary_output=binary_output,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()):  # int() takes "1_2", " 12"
        raise invalid(
            f"Inference-Header-Content-Length {header_length[:40]!r} is not a decimal integer"
        )
    n = int(header_length)
    if not 0 < n <= len(body):
        raise invalid(
            f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _parse_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise invalid(f"malformed JSON: {str(exc)[:200]}") from None


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{where} 'parameters' must be a JSON object")
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    """A boolean parameter, or None when absent: "false" (a string) is refused, not taken as
    true."""
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid(f"{where} parameter '{key}' must be true or false; got {value!r:.40}")


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("'outputs' must be a list of {\"name\": ...} objects")
    outputs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each entry of 'outputs' must be an object with a string 'name'")
        where = f"output '{item['name']}'"
        params = _parameters(item.get("parameters"), where)
        outputs.append(RequestedOutput(item["name"], _flag(params, "binary_data", where)))
    return outputs


@dataclass(slots=True)
class _InputSpec:
    """One entry of `inputs`, its structure checked; its data not yet read."""

    name: str
    datatype: str
    shape: list[int]
    dtype: np.dtype
    params: dict[str, Any]
    item: dict[str, Any]

    @classmethod
    def parse(cls, index: int, item: Any) -> _InputSpec:
        if not isinstance(item, dict):
            raise invalid(f"inputs[{index}] must be an object with name, shape, datatype, data")
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        if not isinstance(name, str):
            raise invalid(f"inputs[{index}] needs a string 'name'")
        if not isinstance(datatype, str):
            raise invalid(f"input '{name}' needs a string 'datatype'")
        if not isinstance(shape, list):
            raise invalid(f"input '{name}' needs a 'shape' list")
        tensors.check_dims(name, shape)
        dtype = tensors.numpy_dtype(name, datatype)
        params = _parameters(item.get("parameters"), f"input '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise invalid(f"input '{name}' has both 'data' and parameters.binary_data_size")
            if type(size) is not int or size < 0:
                raise invalid(f"input '{name}': binary_data_size {size!r} is not a byte count")
        elif "data" not in item:
            raise invalid(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        elif not isinstance(item["data"], list):  # the protocol's (and the OpenAPI document's)
            raise invalid(
                f"input '{name}': 'data' must be a list (flat, or nested as the shape); "
                f"got {type(item['data']).__name__}"
            )
        return cls(name, datatype, shape, dtype, params, item)

    def decode(self, binary: memoryview, offset: int, limits: Limits) -> tuple[Tensor, int]:
        """The tensor, within the limits, and the binary bytes it took."""
        name, datatype, shape = self.name, self.datatype, self.shape
        tensors.check_size(name, shape, limits.max_elements)
        size = self.params.get("binary_data_size")
        if size is not None:
            if offset + size > len(binary):
                raise invalid(
                    f"input '{name}': binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} binary bytes left"
                )
            array = tensors.from_raw(name, datatype, shape, binary[offset : offset + size])
            return Tensor(name, datatype, array, self.params), size
        array = _from_json_data(name, datatype, shape, self.dtype, self.item["data"])
        return Tensor(name, datatype, array, self.params, finite=True), 0  # JSON has no NaN


#: The JSON value types each numeric datatype family takes (orjson gives int, float, bool,
#: str, None): no "1.5" or true as FP32, no null (it became NaN), no 1.5 as INT64 (truncated).
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "f": (frozenset({int, float}), "numbers"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "b": (frozenset({bool}), "true or false"),
}


def _from_json_data(
    name: str, datatype: str, shape: list[int], dtype: np.dtype, data: Any
) -> np.ndarray:
    expected = tensors.element_count(shape)
    flat = data  # a list (_InputSpec.parse)
    found = set(map(type, flat))
    if list in found:  # nested: exactly the shape's nesting
        flat = _unnest(name, data, shape)
        found = set(map(type, flat))
    if len(flat) != expected:
        raise invalid(f"input '{name}': shape {shape} needs {expected} values; got {len(flat)}")
    if datatype == "BYTES":
        out = np.empty(expected, dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else _bytes_value(name, v) for v in flat]
        return out.reshape(shape)
    allowed, what = _JSON_TYPES[dtype.kind]
    if not found <= allowed:
        wrong = sorted(_JSON_NAMES.get(t, t.__name__) for t in found - allowed)
        raise invalid(f"input '{name}': {datatype} data must be {what}; got {', '.join(wrong)}")
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 as FP32 is no silent inf
            array = np.asarray(flat, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise invalid(f"input '{name}': a value is out of {datatype}'s range ({exc})") from None
    return array.reshape(shape)


_JSON_NAMES = {
    type(None): "null",
    bool: "booleans",
    int: "integers",
    float: "floating-point numbers",
    str: "strings",
    dict: "objects",
    list: "lists",
}


def _unnest(name: str, data: Any, shape: list[int]) -> list[Any]:
    """Nested data's values in row-major order, if its nesting is the shape's: one level of
    lists per dimension, each as long as its dimension."""
    level = [data]
    for depth, dim in enumerate(shape):
        values: list[Any] = []
        for item in level:
            if type(item) is not list or len(item) != dim:
                raise invalid(
                    f"input '{name}': nested data does not match shape {shape} "
                    f"(at depth {depth}: expected a list of {dim})"
                )
            values.extend(item)
        level = values
    return level


def _bytes_value(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    raise invalid(f"input '{name}': BYTES data must be strings; got {type(value).__name__}")


def encode_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The body, and with binary outputs the length of its JSON head (the response's
    `Inference-Header-Content-Length`; the raw tensors follow it), else None."""
    outputs, chunks = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if response.binary.get(tensor.name):
            raw = tensors.to_raw(tensor.datatype, tensor.array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in head:  # orjson writes NaN and infinities so: find out whether they were
        _check_finite(response)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _check_finite(response: InferResponse) -> None:
    """JSON has no NaN or infinity (orjson writes null into an FP32 tensor): an output sent
    as JSON that holds one is an error naming it; the binary form carries it."""
    for tensor in response.outputs:
        json_form = not response.binary.get(tensor.name)
        if json_form and tensor.datatype in FLOATS and not np.isfinite(tensor.array).all():
            raise InferenceError(
                ErrorCode.INTERNAL,
                f"output '{tensor.name}' holds NaN or infinite values, which JSON cannot "
                "carry; ask for it as binary data (parameters.binary_data: true) to receive "
                "them",
            )


def _json_data(tensor: Tensor) -> Any:
    """Flat row-major data; numeric arrays go to orjson as they are (serialized in C)."""
    flat = tensor.array.ravel()  # C order, contiguous: a view when the array already is
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if tensor.datatype == "FP16":
        return flat.astype(np.float32)
    return flat
