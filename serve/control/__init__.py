"""The control plane: resolving a config's versions from the registry into verified ONNX
artifacts (resolve). Control loops (autoscaling, delivery) land here."""
