"""Demo models, trained at set-up from datasets that scikit-learn ships (nothing downloaded).

- ``breast_cancer``: v1 GradientBoosting (champion), v2 HistGradientBoosting (challenger),
  v3 StandardScaler + LogisticRegression pipeline: three versions for routing to split.
- ``iris``: multiclass RandomForest.
- ``diabetes``: GradientBoosting regression.
- ``churn``: a mixed-type pipeline (ColumnTransformer: scaled numbers + one-hot strings) on a
  synthetic data frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.errors import ModelgateError
from converters.registry import Registry

SAMPLE_ROWS = 200


@dataclass(frozen=True)
class DemoVersion:
    model: str
    build: Callable[[], tuple[Any, Any]]  # -> (fitted model, sample rows)
    aliases: tuple[str, ...] = ()


def _breast_cancer(estimator: Any) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        # Served models compute in float32: training on float32-exact values keeps histogram
        # tree thresholds representable (float64 bin edges fail the parity check, as they should).
        x = x.astype(np.float32).astype(np.float64)
        return estimator.fit(x, y), x[:SAMPLE_ROWS]

    return build


def _iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    model = RandomForestClassifier(n_estimators=30, max_depth=5, random_state=0).fit(x, y)
    return model, x[np.random.default_rng(0).permutation(len(x))[:SAMPLE_ROWS]]


def _diabetes() -> tuple[Any, Any]:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0).fit(x, y)
    return model, x[:SAMPLE_ROWS]


def churn_frame(rows: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A synthetic customer table with numeric and string columns, and a churn label."""
    try:
        import pandas as pd
    except ImportError as exc:  # a serving install: pandas comes with the mlflow extra
        raise ModelgateError(
            "the churn demo model is a pandas table: pip install 'modelgate[mlflow]' (or pandas)"
        ) from exc

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18, 80, rows).round(1),
            "monthly_spend": rng.gamma(2.0, 30.0, rows).round(2),
            "city": rng.choice(["paris", "berlin", "madrid", "rome"], rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
        }
    )
    score = (
        0.03 * (60 - frame["age"])
        - 0.01 * frame["monthly_spend"]
        + frame["plan"].map({"basic": 1.0, "plus": 0.0, "pro": -1.0})
        + rng.normal(0, 0.5, rows)
    )
    return frame, (score > 0).astype(int).to_numpy()


def _churn() -> tuple[Any, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, y = churn_frame(1000)
    model = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["age", "monthly_spend"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, y)
    return model, frame.iloc[:SAMPLE_ROWS].reset_index(drop=True)


def demo_versions() -> list[DemoVersion]:
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return [
        DemoVersion(
            "breast_cancer",
            _breast_cancer(GradientBoostingClassifier(n_estimators=50, random_state=0)),
            ("champion",),
        ),
        DemoVersion(
            "breast_cancer",
            _breast_cancer(HistGradientBoostingClassifier(max_iter=50, random_state=0)),
            ("challenger",),
        ),
        DemoVersion(
            "breast_cancer",
            _breast_cancer(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        ),
        DemoVersion("iris", _iris, ("champion",)),
        DemoVersion("diabetes", _diabetes, ("champion",)),
        DemoVersion("churn", _churn, ("champion",)),
    ]


def register_demo_models(
    registry: Registry, log: Callable[[str], None] = print
) -> list[tuple[str, str]]:
    """Train and register every demo version; skip models the registry already holds."""
    present = {m.name for m in registry.list_models()}
    registered: list[tuple[str, str]] = []
    for demo in demo_versions():
        if demo.model in present:
            continue
        model, sample = demo.build()
        version = registry.publish_sklearn(demo.model, model, sample)
        for alias in demo.aliases:
            registry.set_alias(demo.model, alias, version)
        registered.append((demo.model, version))
        log(
            f"registered models:/{demo.model}/{version} ({type(model).__name__})"
            + (f" aliases: {', '.join(demo.aliases)}" if demo.aliases else "")
        )
    if not registered:
        log(f"demo models already registered in {registry.location}")
    return registered
