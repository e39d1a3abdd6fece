"""An artifact as a replica gets it: by a reference the control plane pinned at deploy.

`ArtifactRef` names one verified artifact (model.onnx + manifest.json) by its key and the sha256 of
both files, and says where it is: a folder the replica reads in place (one node, or storage every
node mounts), or a URL on an MLflow server's artifact proxy (`mlflow server --serve-artifacts`),
from which each node fetches it once into its own cache. Either way the files are checked against
the pinned digests before a session is built from them: tampering with both files (the model and
the manifest that describes it) fails as surely as a truncated download.

The node cache: `$MODELGATE_ARTIFACT_CACHE`, else `<tmp>/modelgate-<uid>/artifacts` (node-local).
An entry is downloaded into a temporary folder beside it, verified, then renamed into place, so a
reader sees a whole artifact or none; a lock file per entry makes the replicas of one node fetch
it once between them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from converters.manifest import MANIFEST_FILE, ONNX_FILE, Manifest
from serve.core.runtime import ArtifactError, VersionRuntime

CACHE_ENV = "MODELGATE_ARTIFACT_CACHE"
#: Seconds a download may take before the replica's start fails.
FETCH_TIMEOUT_S = 300.0
_CHUNK = 1 << 20
#: Downloads this process made (what tests count to see a node fetch once).
fetches = 0


class ArtifactRef(BaseModel):
    """One verified artifact, pinned at deploy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="'<model>/<version>-<content key>': its folder in any store.")
    sha256: str = Field(description="sha256 of model.onnx.")
    manifest_sha256: str = Field(description="sha256 of manifest.json.")
    path: str | None = Field(None, description="A folder read in place.")
    url: str | None = Field(None, description="The published folder's URL (MLflow's proxy).")


def local_artifact(ref: ArtifactRef) -> Path:
    """A folder holding the artifact on this node, verified against `ref`'s digests; fetched
    into the node's cache first when it is published. Raises ArtifactError saying why not."""
    if ref.url is None:
        assert ref.path is not None, "an artifact reference names a path or a URL"
        folder = Path(ref.path)
        _verify(folder, ref)
        return folder
    entry = cache_root() / ref.key
    if _complete(entry, ref):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry.with_name(f".{entry.name}.lock")):
        if _complete(entry, ref):  # another replica of this node fetched it meanwhile
            return entry
        _fetch(ref, entry)
    return entry


def open_runtime(ref: ArtifactRef, intra_op_threads: int = 1) -> VersionRuntime:
    """The version's ONNX Runtime session, from its artifact on this node (`local_artifact`):
    model.onnx read and hashed once, against the pin."""
    return VersionRuntime(local_artifact(ref), intra_op_threads, verified_sha256=ref.sha256)


def local_manifest(ref: ArtifactRef) -> Manifest:
    """The artifact's manifest alone, checked against its pinned digest: what a router needs of
    a version whose replicas run elsewhere (read from the node's cache when it holds the
    artifact, else fetched on its own)."""
    if ref.url is None:
        assert ref.path is not None
        try:
            data = (Path(ref.path) / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{ref.key}: no readable {MANIFEST_FILE}: {exc}") from exc
    else:
        cached = cache_root() / ref.key / MANIFEST_FILE
        data = cached.read_bytes() if cached.is_file() else b""
        if hashlib.sha256(data).hexdigest() != ref.manifest_sha256:  # not cached (whole)
            data = _get(f"{ref.url}/{MANIFEST_FILE}")
    found = hashlib.sha256(data).hexdigest()
    if found != ref.manifest_sha256:
        raise ArtifactError(
            f"{ref.key}: {MANIFEST_FILE} has sha256 {found[:12]}…, not the "
            f"{ref.manifest_sha256[:12]}… pinned at deploy (tampered with, or replaced since)"
        )
    try:
        return Manifest.model_validate_json(data)
    except ValueError as exc:
        raise ArtifactError(f"{ref.key}: {MANIFEST_FILE} is not a manifest: {exc}") from exc


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    private = Path(tempfile.gettempdir()) / f"modelgate-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    info = private.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ArtifactError(
            f"{private}: the artifact cache's folder must be this user's own and private (0700); "
            f"remove it, or set {CACHE_ENV}"
        )
    return private / "artifacts"


def _complete(entry: Path, ref: ArtifactRef) -> bool:
    try:
        _verify(entry, ref)
    except ArtifactError:
        return False
    return True


def _verify(folder: Path, ref: ArtifactRef) -> None:
    for name, pinned in ((MANIFEST_FILE, ref.manifest_sha256), (ONNX_FILE, ref.sha256)):
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{ref.key}: {path} is missing")
        found = _sha256(path)
        if found != pinned:
            raise ArtifactError(
                f"{ref.key}: {name} has sha256 {found[:12]}…, not the {pinned[:12]}… pinned at "
                "deploy (tampered with, or replaced since)"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch(ref: ArtifactRef, entry: Path) -> None:
    """Download both files beside `entry`, verify them, then move them into place whole."""
    global fetches
    assert ref.url is not None
    fetches += 1
    aside = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for name, pinned in ((MANIFEST_FILE, ref.manifest_sha256), (ONNX_FILE, ref.sha256)):
            found = _download(f"{ref.url}/{name}", aside / name)
            if found != pinned:
                raise ArtifactError(
                    f"{ref.key}: the {name} served at {ref.url} has sha256 {found[:12]}…, not "
                    f"the {pinned[:12]}… pinned at deploy: refused"
                )
        if entry.exists():  # an earlier entry that no longer verifies
            shutil.rmtree(entry)
        aside.rename(entry)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _download(url: str, to: Path) -> str:
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers=mlflow_headers())
    try:
        with (
            urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response,
            to.open("wb") as out,
        ):
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise ArtifactError(f"could not fetch {url}: {exc}") from exc
    return digest.hexdigest()


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers=mlflow_headers())
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ArtifactError(f"could not fetch {url}: {exc}") from exc


def mlflow_headers() -> dict[str, str]:
    """The credentials MLflow's own clients send, from the same variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(secret).decode()}
    return {}
