"""The `modelgate` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from converters.errors import ModelgateError


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=None,
        help="MLflow tracking/registry URI (sqlite:///…, http://…) or a models folder; "
        "default: $MODELGATE_REGISTRY or sqlite:///.modelgate/mlflow.db",
    )


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from converters.registry import open_registry

    return open_registry(args.registry or os.environ.get("MODELGATE_REGISTRY"))


def cmd_demo_models(args: argparse.Namespace) -> int:
    from converters.demo import register_demo_models

    registry = _open(args)
    register_demo_models(registry)
    print(f"registry: {registry.location}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from converters.parity import Tolerance
    from converters.pipeline import ConvertOptions, convert_uri

    tolerance = Tolerance(
        **{k: v for k, v in (("min_label_agreement", args.min_label_agreement),
                             ("prob_atol", args.prob_atol), ("value_atol", args.value_atol),
                             ("value_rtol", args.value_rtol)) if v is not None}
    )
    options = ConvertOptions(tolerance=tolerance, trust_pickle=args.trust_pickle,
                             trusted_types=tuple(args.trust_type), out=Path(args.out))
    result = convert_uri(_open(args), args.uri, options)
    m = result.manifest
    print(f"{m.source_uri} ({m.flavor}, {m.task}) -> {result.path / 'model.onnx'}"
          + (" [cached]" if result.cached else ""))
    if m.parity is not None:
        p = m.parity
        agreement = "" if p.label_agreement is None else f"label agreement {p.label_agreement:.4f}, "
        print(f"parity on {p.rows} rows ({p.sample_source}): {agreement}"
              f"max abs diff {p.max_abs_diff:.3g}, max rel diff {p.max_rel_diff:.3g}")
    else:
        print("parity: none (ONNX passed through as is)")
    print(f"sha256 {m.sha256}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from converters.artifacts import cached

    registry = _open(args)
    artifacts = Path(args.artifacts)
    print(f"registry: {registry.location}")
    for model in registry.list_models():
        print(model.name)
        for v in model.versions:
            found = sorted(artifacts.glob(f"{model.name}/{v.version}-*"))
            onnx = next((str(d / "model.onnx") for d in found if cached(d) is not None), "-")
            aliases = f" @{', @'.join(v.aliases)}" if v.aliases else ""
            print(f"  {v.version}{aliases}  onnx: {onnx}")
    return 0


QUICKSTART_URIS = (
    "models:/breast_cancer@champion",
    "models:/breast_cancer@challenger",
    "models:/breast_cancer/3",
    "models:/iris@champion",
    "models:/diabetes@champion",
    "models:/churn@champion",
)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Demo models -> verified ONNX artifacts. Serving arrives with the serving core."""
    from converters.demo import register_demo_models
    from converters.pipeline import ConvertOptions, convert_uri

    registry = _open(args)
    register_demo_models(registry)
    for uri in QUICKSTART_URIS:
        result = convert_uri(registry, uri, ConvertOptions())
        print(f"converted {uri} -> {result.path / 'model.onnx'}")
    print("\nquickstart: the demo models are registered and converted to verified ONNX.\n"
          "Serving them (Ray Serve, HTTP/gRPC) is not built yet: it lands with the serving core.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-models", help="train and register the demo models")
    _registry_arg(demo)
    demo.set_defaults(func=cmd_demo_models)

    convert = sub.add_parser("convert", help="convert a registry model to a verified ONNX artifact")
    convert.add_argument("uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    convert.add_argument("--out", default=".modelgate/artifacts", help="artifact store folder")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="allow loading pickle/joblib files (runs code from the file)")
    convert.add_argument("--trust-type", action="append", default=[],
                         help="a skops type to trust beyond the defaults (repeatable)")
    for name in ("min-label-agreement", "prob-atol", "value-atol", "value-rtol"):
        convert.add_argument(f"--{name}", type=float, default=None,
                             help="parity tolerance override")
    _registry_arg(convert)
    convert.set_defaults(func=cmd_convert)

    models = sub.add_parser("models", help="list models, versions, aliases and ONNX artifacts")
    models.add_argument("--artifacts", default=".modelgate/artifacts", help="artifact store folder")
    _registry_arg(models)
    models.set_defaults(func=cmd_models)
    quick = sub.add_parser("quickstart", help="register and convert the demo models, then serve")
    _registry_arg(quick)
    quick.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModelgateError as exc:
        print(f"modelgate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
