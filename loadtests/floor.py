"""`make bench`'s floor: the gateway's own Router, built from the gateway's args (every model,
thread and handle of it), answering every HTTP request and gRPC ModelInfer with the baseline's
handlers instead.
What the baseline's work costs inside a router replica's process: between it and `baseline`
lies what the router's process costs; between it and the gateway, what the gateway's request
work costs.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from loadtests.baseline import InProcess
from serve.core.artifact_cache import local_artifact
from serve.ray.app import RouterDeployment, build_gateway


class RouterFloor(RouterDeployment.func_or_class):  # type: ignore[misc,name-defined]
    """The Router, with the baseline's handler on its first colocated version's artifact."""

    def __init__(self, spec: dict[str, Any], handles: dict[str, Any]) -> None:
        super().__init__(spec, handles)
        ref = next(v.artifact for v in self.spec.versions if v.placement == "colocated")
        folder = local_artifact(ref)  # as the Router's own colocated version reads it
        self.baseline = InProcess.func_or_class(str(folder))  # type: ignore[attr-defined]

    async def __call__(self, request: Request) -> JSONResponse:
        return await self.baseline(request)  # type: ignore[no-any-return]

    async def ModelInfer(self, request: Any) -> Any:
        return await self.baseline.ModelInfer(request)


def floor_app(args: dict[str, Any]) -> serve.Application:
    """The gateway's app (the same args) with `RouterFloor` as its Router."""
    return build_gateway(args, serve.deployment(name="Router")(RouterFloor))
