"""The ONNX opsets modelgate targets: pinned here, and nowhere else.

scikit-learn models go through skl2onnx at a recent, widely supported opset. LightGBM and XGBoost go
through onnxmltools, whose converters support a lower maximum; they get their own pin.
"""

from __future__ import annotations

SKLEARN_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
BOOST_OPSET: int = 15
