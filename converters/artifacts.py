"""Content-addressed artifact store: ``<root>/<name>/<version>-<key>/{model.onnx,manifest.json}``.

The key digests the source model's files and everything that shapes the conversion (opsets,
tolerances, library versions), so the same source converted twice reuses the first result. A
directory appears only once complete (written aside, then renamed), so nothing half-written is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from converters.manifest import ONNX_FILE, Manifest, read_manifest, write_manifest

DEFAULT_ARTIFACTS = Path(".modelgate/artifacts")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def cache_key(source_sha256: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"source": source_sha256, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def artifact_dir(root: Path, name: str, version: str, key: str) -> Path:
    return root / name / f"{version}-{key}"


def cached(directory: Path) -> Manifest | None:
    """The manifest of a complete, untampered artifact in `directory`, else None."""
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError):
        return None
    onnx_path = directory / ONNX_FILE
    if not onnx_path.exists() or sha256_file(onnx_path) != manifest.sha256:
        return None
    return manifest


def publish(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> None:
    """Write the artifact atomically: aside in a temporary folder, then one rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / ONNX_FILE).write_bytes(onnx_bytes)
        write_manifest(staging, manifest)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
