"""Turn a fetched model file into a Python object, refusing anything that would run code unasked.

skops files load with an allowlist of types; pickle (and joblib, cloudpickle) files load only when
the caller passes ``trust_pickle=True``: unpickling runs whatever code the file carries.
This runs in
the control plane (conversion); replicas load ONNX only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from converters.errors import UnsupportedModelError, UntrustedModelError
from converters.registry import FetchedModel

#: Module prefixes whose types skops may load without the user naming them. scikit-learn's own
#: classes cannot run code on load; a crafted tree can crash the converting process, not a replica.
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.")

PICKLE_FORMATS = ("pickle", "cloudpickle")


def load_model(
    fetched: FetchedModel, *, trust_pickle: bool = False, trusted_types: Iterable[str] = ()
) -> Any:
    """The model object (or the ONNX bytes for the onnx flavor)."""
    fmt = fetched.serialization_format
    if fetched.flavor == "onnx":
        return fetched.model_file.read_bytes()
    if fmt == "skops":
        return _load_skops(fetched, set(trusted_types))
    if fmt in PICKLE_FORMATS:
        return _load_pickle(fetched, trust_pickle)
    if fmt == "native" and fetched.flavor == "lightgbm":
        return _load_lightgbm(fetched)
    if fmt == "native" and fetched.flavor == "xgboost":
        return _load_xgboost(fetched)
    raise UnsupportedModelError(
        f"{fetched.uri}: cannot load flavor {fetched.flavor!r} saved as {fmt!r}; supported: "
        "sklearn (skops, or pickle with --trust-pickle), lightgbm (native or sklearn API), "
        "xgboost (native), onnx"
    )


def _load_skops(fetched: FetchedModel, trusted: set[str]) -> Any:
    import skops.io

    path = fetched.model_file
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{fetched.uri}: {path.name} is not a readable skops file: {exc}"
        ) from exc
    refused = [t for t in untrusted if t not in trusted and not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if refused:
        raise UntrustedModelError(
            f"{fetched.uri}: the skops file holds types modelgate does not trust by default: "
            f"{', '.join(refused)}. Review them, then pass --trust-type for each."
        )
    return skops.io.load(path, trusted=list(untrusted))


def _load_pickle(fetched: FetchedModel, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise UntrustedModelError(
            f"{fetched.uri}: {fetched.model_file.name} is a pickle, and loading a pickle runs any "
            "code it carries. Re-save the model with skops (the safe format), or, if you trust "
            "its source, convert with --trust-pickle."
        )
    import joblib

    try:
        return joblib.load(fetched.model_file)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{fetched.uri}: cannot unpickle {fetched.model_file.name}: {exc}"
        ) from exc


def _load_lightgbm(fetched: FetchedModel) -> Any:
    lgb = _boost_module("lightgbm")
    try:
        return lgb.Booster(model_file=str(fetched.model_file))
    except Exception as exc:
        raise UnsupportedModelError(f"{fetched.uri}: not a LightGBM model file: {exc}") from exc


def _load_xgboost(fetched: FetchedModel) -> Any:
    import json

    xgb = _boost_module("xgboost")
    booster = xgb.Booster()
    try:
        booster.load_model(str(fetched.model_file))
    except Exception as exc:
        raise UnsupportedModelError(f"{fetched.uri}: not an XGBoost model file: {exc}") from exc
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    cls = xgb.XGBRegressor if objective.startswith("reg:") else xgb.XGBClassifier
    if not objective.startswith(("reg:", "binary:", "multi:")):
        raise UnsupportedModelError(
            f"{fetched.uri}: XGBoost objective {objective!r} is not supported; supported: "
            "reg:*, binary:*, multi:*"
        )
    model = cls()
    model.load_model(str(fetched.model_file))
    return model


def _boost_module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"{name} models need the boost extra: pip install 'modelgate[boost]'"
        ) from exc
