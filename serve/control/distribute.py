"""How replicas on every node get the artifacts a deploy resolved: each is pinned by its digests
(serve/core/artifact_cache.py: ArtifactRef) and either published to the registry's MLflow server
or read in place.

With an MLflow server as registry (`registry: http://…`, the team setup), every verified artifact
is uploaded through the server's artifact proxy (`mlflow server --serve-artifacts`, MLflow's
default) to a location of its own, `modelgate/artifacts/<model>/<version>-<content key>/`, beside
the runs rather than inside the source version's run: the key digests the source and the
conversion settings, so one upload serves every deploy of that conversion, whichever run or
alias led to it, and a node needs only HTTP access to the server. Whatever store the server
proxies (local disk, S3, GCS, Azure) is then every node's. Other registries (a folder, the
embedded sqlite one) keep their artifacts on the node that converted them: a cluster of several
nodes refuses such a config unless `shared_artifacts` says every node mounts that folder.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from converters.artifacts import sha256_file
from converters.manifest import MANIFEST_FILE, ONNX_FILE, read_manifest
from serve.control.resolve import ConfigError, Resolved
from serve.core.artifact_cache import ArtifactRef, mlflow_headers
from serve.core.config import GatewayConfig

#: Where in the MLflow server's artifact store modelgate publishes.
ARTIFACT_ROOT = "modelgate/artifacts"
_API = "/api/2.0/mlflow-artifacts/artifacts"
UPLOAD_TIMEOUT_S = 300.0


def server_of(registry: str | None) -> str | None:
    """The MLflow server's base URL when the registry is one, else None."""
    if registry and registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    return None


def distribution(config: GatewayConfig) -> str:
    """'registry' or 'local', `config.distribute` with 'auto' decided."""
    server = server_of(config.registry)
    if config.distribute == "auto":
        return "registry" if server is not None else "local"
    if config.distribute == "registry" and server is None:
        raise ConfigError(
            "distribute: registry publishes artifacts to an MLflow server, but the registry "
            f"is {config.registry!r}: name the server (registry: http://host:5000), or set "
            "distribute: local"
        )
    return config.distribute


def pin(config: GatewayConfig, resolved: list[Resolved]) -> list[ArtifactRef]:
    """Each resolved version's reference, published first when the distribution says so."""
    server = server_of(config.registry) if distribution(config) == "registry" else None
    refs = []
    for entry in resolved:
        folder = Path(entry.artifact)
        ref = ArtifactRef(
            key=f"{entry.model.name}/{folder.name}",
            sha256=read_manifest(folder).sha256,  # resolve checked model.onnx against it
            manifest_sha256=sha256_file(folder / MANIFEST_FILE),
            path=None if server else str(folder),
        )
        if server is not None:
            ref = ref.model_copy(update={"url": publish(server, ref, folder)})
        refs.append(ref)
    return refs


def check_reachable(config: GatewayConfig, refs: list[ArtifactRef], nodes: int) -> None:
    """A config whose artifacts only this node can read is refused on a cluster of several."""
    local = [r.key for r in refs if r.url is None]
    if local and nodes > 1 and not config.shared_artifacts:
        raise ConfigError(
            f"this cluster has {nodes} nodes, but the artifacts of {', '.join(local)} are in "
            f"{config.artifacts} on the node that converted them: replicas elsewhere could not "
            "start. Use an MLflow server as registry (registry: http://host:5000; the artifacts "
            "are then published to it and fetched by every node), or set shared_artifacts: true "
            "if that folder is on storage every node mounts at the same path"
        )


def publish(server: str, ref: ArtifactRef, folder: Path) -> str:
    """Upload the artifact unless the server holds it already; its folder's URL."""
    path = f"{ARTIFACT_ROOT}/{ref.key}"
    held = _listing(server, path)
    for name in (ONNX_FILE, MANIFEST_FILE):  # the manifest last: its presence marks a whole one
        local = folder / name
        if held.get(name) != local.stat().st_size:
            _upload(f"{server}{_API}/{path}/{name}", local)
    return f"{server}{_API}/{path}"


def _listing(server: str, path: str) -> dict[str, int]:
    query = urllib.parse.urlencode({"path": path})
    request = urllib.request.Request(f"{server}{_API}?{query}", headers=mlflow_headers())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            doc = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"could not list {path} on the MLflow server {server}: {exc}") from exc
    return {
        f["path"]: int(f.get("file_size", -1)) for f in doc.get("files", []) if not f.get("is_dir")
    }


def _upload(url: str, local: Path) -> None:
    request = urllib.request.Request(
        url, data=local.read_bytes(), method="PUT", headers=mlflow_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"could not publish {local} to {url}: {exc}") from exc
