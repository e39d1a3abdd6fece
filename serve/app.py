"""`serve.app:build_app`, the import path users' configs name. The gateway is wired in
serve/ray/app.py; this name stays so that every config written for modelgate keeps working."""

from serve.ray.app import build_app

__all__ = ["build_app"]
