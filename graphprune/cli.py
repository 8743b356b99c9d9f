"""The ``graphprune`` command line."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from rich.console import Console

from .errors import GraphPruneError
from .groups import analyze
from .modelspec import build_model, parse_shape


def _inspect(args: argparse.Namespace, console: Console) -> None:
    model, default_shape = build_model(args.model)
    shape = parse_shape(args.input_shape) if args.input_shape else default_shape
    model.eval()
    with console.status(f"analyzing {args.model} on input {list(shape)}"):
        gg = analyze(model, torch.randn(*shape))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphprune", description="Structured-pruning compiler for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show a model's channel groups and cost model")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--dot", metavar="F", help="write the channel-space graph as Graphviz dot")
    p.add_argument("--png", metavar="F", help="draw the channel-space graph to a PNG")
    args = parser.parse_args(argv)
    console = Console(stderr=args.command == "inspect" and getattr(args, "json", False))
    try:
        if args.command == "inspect":
            _inspect(args, console)
    except GraphPruneError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
