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

from serve import tensors
from serve.errors import invalid
from serve.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class Limits:
    max_elements: int = 1 << 24  # per tensor


def decode_request(
    body: bytes, header_length: str | None, model: str, version: str | None, limits: Limits
) -> InferRequest:
    json_part, binary = _split(body, header_length)
    doc = _parse_json(json_part)
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request must have a non-empty 'inputs' list")
    inputs, consumed = [], 0
    for i, item in enumerate(raw_inputs):
        tensor, used = _decode_input(i, item, binary, consumed, limits)
        inputs.append(tensor)
        consumed += used
    if consumed != len(binary):
        raise invalid(f"binary data has {len(binary) - consumed} bytes no input claims")
    parameters = _parameters(doc.get("parameters"), "request")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=str(doc.get("id") or ""),
        parameters=parameters,
        outputs=_requested_outputs(doc.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise invalid(
            f"Inference-Header-Content-Length {header_length!r} is not an integer"
        ) from None
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


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("'outputs' must be a list of {\"name\": ...} objects")
    outputs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each entry of 'outputs' must be an object with a string 'name'")
        params = _parameters(item.get("parameters"), f"output '{item['name']}'")
        binary = params.get("binary_data")
        outputs.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return outputs


def _decode_input(
    index: int, item: Any, binary: memoryview, offset: int, limits: Limits
) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise invalid(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str):
        raise invalid(f"inputs[{index}] needs a string 'name'")
    if not isinstance(datatype, str):
        raise invalid(f"input '{name}' needs a string 'datatype'")
    if not isinstance(shape, list):
        raise invalid(f"input '{name}' needs a 'shape' list")
    tensors.check_shape(name, shape, limits.max_elements)
    dtype = tensors.numpy_dtype(name, datatype)
    params = _parameters(item.get("parameters"), f"input '{name}'")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise invalid(
                f"input '{name}': binary_data_size {size!r} does not fit the "
                f"{len(binary) - offset} binary bytes left"
            )
        array = tensors.from_raw(name, datatype, shape, binary[offset : offset + size])
        return Tensor(name, datatype, array, params), size
    if "data" not in item:
        raise invalid(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return Tensor(
        name, datatype, _from_json_data(name, datatype, shape, dtype, item["data"]), params
    ), 0


def _from_json_data(
    name: str, datatype: str, shape: list[int], dtype: np.dtype, data: Any
) -> np.ndarray:
    expected = tensors.element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data) if isinstance(data, list) else [data]
        if len(flat) != expected:
            raise invalid(f"input '{name}': shape {shape} needs {expected} values; got {len(flat)}")
        out = np.empty(expected, dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else _bytes_value(name, v) for v in flat]
        return out.reshape(shape)
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 as FP32 is no silent inf
            array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise invalid(
            f"input '{name}': data is not all {datatype} values, or one is out of its range ({exc})"
        ) from None
    if array.size != expected:
        raise invalid(f"input '{name}': shape {shape} needs {expected} values; got {array.size}")
    return array.reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


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
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _json_data(tensor: Tensor) -> Any:
    """Flat row-major data; numeric arrays go to orjson as they are (serialized in C)."""
    flat = tensor.array.ravel()  # C order, contiguous: a view when the array already is
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if tensor.datatype == "FP16":
        return flat.astype(np.float32)
    return flat
