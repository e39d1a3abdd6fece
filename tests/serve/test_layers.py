"""The layers stay layers: the core imports no framework, only serve/ray imports Ray, and only one
module of it reaches into Ray's private APIs."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVE = Path(__file__).resolve().parents[2] / "serve"

#: What a layer must not load, transitive imports included.
FORBIDDEN = {
    "serve.core": ["ray", "starlette", "grpc", "onnx", "skl2onnx", "sklearn", "mlflow"],
    "serve.protocol": ["ray", "onnx", "skl2onnx", "sklearn", "mlflow"],
    "serve.observe": ["ray", "starlette", "grpc", "onnx", "skl2onnx", "sklearn", "mlflow"],
    "serve.transport": ["ray", "starlette", "grpc", "onnx", "skl2onnx", "sklearn", "mlflow"],
}


def _loaded_after_import(package: str) -> set[str]:
    """Every top-level module in sys.modules after importing the package and all its modules in
    a fresh interpreter."""
    modules = [f"{package}.{p.stem}" for p in (SERVE / package.split(".")[1]).glob("*.py")]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_loads_none_of_what_it_must_not(package: str) -> None:
    loaded = _loaded_after_import(package)
    assert "numpy" in loaded  # the check sees transitive imports (the core needs numpy)
    assert sorted(loaded & set(FORBIDDEN[package])) == []


_IMPORTS = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    out[path] = names
print(json.dumps(out))
"""


@functools.cache
def _all_imports() -> dict[str, list[str]]:
    """Every module each source file imports, at the top or inside a function: parsed in a
    fresh interpreter. Python 3.11.7's `ast` keeps one recursion counter for all threads, so
    parsing here while another thread of this process (Ray's, in a session that started it)
    formats a traceback can fail with "AST constructor recursion depth mismatch"."""
    paths = [str(p) for p in _sources()]
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *paths], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def _imports(path: Path) -> list[str]:
    return _all_imports()[str(path)]


def _sources() -> list[Path]:
    return sorted(p for p in SERVE.rglob("*.py") if "protos" not in p.parts)


def test_only_the_ray_package_imports_ray() -> None:
    outside = {
        str(p.relative_to(SERVE.parent)): [n for n in _imports(p) if n.split(".")[0] == "ray"]
        for p in _sources()
        if p.parent.name != "ray"
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_only_one_module_reaches_into_rays_private_apis() -> None:
    private = {
        str(p.relative_to(SERVE.parent))
        for p in _sources()
        for name in _imports(p)
        if name.split(".")[0] == "ray"
        and ("_private" in name or "experimental" in name or name.endswith("context"))
    }
    assert private <= {"serve/ray/internals.py"}


#: The load-test harness's extra (pyproject's `loadtest`): never needed to serve.
HARNESS = ["aiohttp", "hdrh", "rich", "matplotlib"]


def test_the_serving_path_and_the_cli_need_none_of_the_harness_libraries() -> None:
    """In an interpreter where the harness's libraries cannot be imported (as after a plain
    `pip install modelgate`): what a replica imports loads, and the CLI serves its commands and
    says which extra the load-test commands need."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HARNESS!r}: raise ImportError(name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import serve.app, serve.grpc_service\n"
        "from serve.cli import main\n"
        "assert main(['api-key', '--name', 'x']) == 0\n"
        "sys.exit(main(['loadtest']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "pip install 'modelgate[loadtest]'" in out.stderr
    assert "sha256:" in out.stdout
