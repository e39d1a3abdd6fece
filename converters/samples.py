"""Sample rows: read and written as JSON (`{"columns"?: [...], "data": [[...], ...]}`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def sample_to_json(sample: Any) -> dict[str, Any]:
    if hasattr(sample, "columns"):
        return {"columns": [str(c) for c in sample.columns], "data": sample.to_numpy().tolist()}
    return {"data": np.asarray(sample).tolist()}


def sample_from_json(doc: dict[str, Any]) -> Any:
    if "columns" in doc:
        import pandas as pd

        return pd.DataFrame(doc["data"], columns=doc["columns"])
    return np.asarray(doc["data"])


def read_sample(path: Path) -> Any:
    return sample_from_json(json.loads(path.read_text()))


def write_sample(path: Path, sample: Any) -> None:
    path.write_text(json.dumps(sample_to_json(sample)))
