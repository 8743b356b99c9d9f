"""The ``graphprune`` command line."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from rich.console import Console

from .api import prepare
from .budget_target import Budget
from .errors import GraphPruneError
from .export import export_onnx
from .groups import analyze
from .modelspec import build_model, parse_shape


def _inspect(args: argparse.Namespace, console: Console) -> None:
    model, default_shape = build_model(args.model)
    shape = parse_shape(args.input_shape) if args.input_shape else default_shape
    model.eval()
    with console.status(f"analyzing {args.model} on input {list(shape)}"):
        gg = analyze(model, torch.randn(*shape), specialize_submodules=args.specialize_submodules)
    if args.json:
        print(json.dumps(gg.to_json(), indent=2))
    else:
        gg.summary(console)
    if args.dot:
        with open(args.dot, "w") as f:
            f.write(gg.to_dot())
        console.print(f"wrote {args.dot}")
    if args.png:
        gg.draw(args.png)
        console.print(f"wrote {args.png}")


def _prune(args: argparse.Namespace, console: Console) -> None:
    model, default_shape = build_model(args.model)
    shape = parse_shape(args.input_shape) if args.input_shape else default_shape
    model.eval()
    x = torch.randn(*shape)
    budget = Budget(**{args.metric: args.budget})
    options = dict(_option(o) for o in args.set or [])
    with console.status(f"analyzing {args.model} on input {list(shape)}"):
        session = prepare(model, args.method, budget, x, round_to=args.round_to, min_channels=args.min_channels,
                          specialize_submodules=args.specialize_submodules, **options)
    console.print(f"[green]analyzed[/green]: {len(session.gg.prunable_groups)} prunable groups of {len(session.gg.groups)}")
    if session.method.trains:  # no data here: the method finishes on its own and reports how (nap: from the example input)
        result = session.finish()
    else:
        with console.status(f"{args.method}: allocating channels and slimming"):
            result = session.finish()
    result.report.print(console)
    if args.plan:
        with open(args.plan, "w") as f:
            f.write(result.plan.to_json())
        console.print(f"wrote plan {args.plan}")
    if args.save:
        torch.save(result.model, args.save)
        console.print(f"wrote slim model {args.save}")
    if args.onnx:
        with console.status("exporting ONNX and checking it in onnxruntime"):
            rep = export_onnx(result.model, args.onnx, x)
        console.print(
            f"wrote {args.onnx} ({rep.file_bytes / 1e6:.1f} MB, {rep.exporter} exporter, opset {rep.opset}); "
            f"onnxruntime max |diff| {rep.max_abs_diff:.2e} ({rep.provider})"
        )


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE: a Python literal (number, bool, None, quoted string), else the text itself."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise GraphPruneError(f"--set takes KEY=VALUE (a method option, e.g. granularity=weight), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


SPECIALIZE_HELP = ("trace submodules whose code branches on traced values along the example input's path "
                   "(prunable, guarded to inputs that take that path) instead of keeping them opaque leaves")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphprune", description="Structured-pruning compiler for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show a model's channel groups and cost model")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--dot", metavar="F", help="write the channel-space graph as Graphviz dot")
    p.add_argument("--png", metavar="F", help="draw the channel-space graph to a PNG")
    p.add_argument("--specialize-submodules", action="store_true", help=SPECIALIZE_HELP)
    p = sub.add_parser("prune", help="prune a model to a budget and write the slim model, plan and ONNX")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory")
    p.add_argument("--method", default="l1", help="pruning method (l1, l2, uniform, random, ...)")
    p.add_argument("--budget", type=float, required=True, help="ratio of the full model to keep (<= 1) or an absolute count")
    p.add_argument("--metric", choices=("macs", "params"), default="macs")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's own)")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    p.add_argument("--min-channels", type=int, default=1, help="fewest channels any group keeps")
    p.add_argument("--specialize-submodules", action="store_true", help=SPECIALIZE_HELP)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable (e.g. --method nap --metric params --set granularity=weight)")
    p.add_argument("--onnx", metavar="F", help="export the slim model to ONNX and verify it in onnxruntime")
    p.add_argument("--plan", metavar="F", help="write the pruning plan as JSON")
    p.add_argument("--save", metavar="F", help="torch.save the slim model")
    args = parser.parse_args(argv)
    console = Console(stderr=args.command == "inspect" and getattr(args, "json", False))
    try:
        if args.command == "inspect":
            _inspect(args, console)
        elif args.command == "prune":
            _prune(args, console)
    except GraphPruneError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
