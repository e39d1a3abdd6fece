"""The gateway's core: the data plane and everything a request meets on its way through it
(authorization, routing, validation, batching, shadowing, the ONNX session), with its types, its
errors and its config. No Ray, no web framework, no gRPC, no ONNX tooling: a test imports this
package in a fresh interpreter and checks (tests/serve/test_layers.py)."""
