"""The ``graphprune`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

import torch
from rich.console import Console
from rich.markup import escape

from . import passes
from .api import prepare, untrained_message
from .budget.targets import Budget
from .errors import GraphPruneError
from .export.onnx import export_onnx
from .groups.graph import analyze
from .modelspec import build_model, load_weights, parse_shape
from .groups.plan import Plan


def _inspect(args: argparse.Namespace, console: Console) -> None:
    model, default_shape = build_model(args.model)
    shape = parse_shape(args.input_shape) if args.input_shape else default_shape
    model.eval()
    x = _example(shape, args.vocab)
    with console.status(f"analyzing {args.model} on input {list(shape)}"):
        gg = analyze(model, x, specialize_submodules=args.specialize_submodules)
    plan = _read_plan(args.plan) if args.plan else None  # checked against gg where it is shown
    if args.json:
        print(json.dumps(gg.to_json(), indent=2))
    else:
        gg.summary(console, plan)
    if args.dot:
        with open(args.dot, "w") as f:
            f.write(gg.to_dot())
        console.print(f"wrote {args.dot}")
    if args.png:
        gg.draw(args.png, plan)
        console.print(f"wrote {args.png}")
    if args.html:
        with open(args.html, "w") as f:
            f.write(gg.to_html(plan))
        console.print(f"wrote {args.html} (one self-contained page: open it in a browser, offline)")


def _read_plan(path: str) -> Plan:
    try:
        with open(path) as f:
            return Plan.from_json(f.read())
    except (OSError, ValueError) as exc:
        raise GraphPruneError(f"--plan: cannot read {path} ({exc}); give a plan written by `graphprune prune --plan F` "
                              "or result.plan.to_json()") from exc


def _prune(args: argparse.Namespace, console: Console) -> None:
    model, default_shape = build_model(args.model)
    if args.weights:
        model = load_weights(model, args.weights)
    shape = parse_shape(args.input_shape) if args.input_shape else default_shape
    model.eval()
    x = _example(shape, args.vocab)
    budget = Budget.parse(args.budget, args.metric)
    options = dict(_option(o) for o in args.set or [])
    if args.uniform_layers:  # only when asked: a third-party method need not know the option
        options["uniform_layers"] = True
    if args.ignore:
        options["ignored_layers"] = args.ignore
    if args.ratio:
        options["ratios"] = {layer: value for layer, value in (_option(r, "--ratio", "LAYER=RATIO (layer3=0.5)") for r in args.ratio)}
    if args.calib:  # under the name the method takes them by (lwdna: train_data)
        data = "calib_data" if "calib_data" in passes.get(args.method).options() else "train_data"
        options.update({data: _calibration(args.calib), "loss_fn": _loss_fn(args.loss)})
    if not passes.get(args.method).completes_untrained:
        raise GraphPruneError(untrained_message(args.method, "the command line has no training data, so prune with it from Python "
                                                f"(graphprune.apply(model, {args.method!r}, budget, x, train_data=..., "
                                                "loss_fn=..., epochs=...))"))
    with console.status(f"analyzing {args.model} on input {list(shape)}"):
        session = prepare(model, args.method, budget, x, round_to=_round_to(args.round_to), min_channels=args.min_channels,
                          specialize_submodules=args.specialize_submodules, **options)
    console.print(f"[green]analyzed[/green]: {len(session.gg.prunable_groups)} prunable groups of {len(session.gg.groups)}")
    with console.status(f"{args.method}: allocating channels and slimming"):
        result = session.finish()
    result.report.print(console)
    if args.plan:
        with open(args.plan, "w") as f:
            f.write(result.plan.to_json())
        console.print(f"wrote plan {args.plan}")
    if args.save:
        result.save(args.save)
        console.print(f"wrote {args.save}: the plan and the pruned weights (torch.load(..., weights_only=True) reads it); "
                      f"graphprune.load({args.save!r}, <a fresh {type(model).__name__}>) rebuilds the pruned model")
    if args.onnx:
        with console.status("exporting ONNX and checking it in onnxruntime"):
            rep = export_onnx(result.model, args.onnx, x)
        console.print(
            f"wrote {args.onnx} ({rep.file_bytes / 1e6:.1f} MB, {rep.exporter} exporter, opset {rep.opset}); "
            f"onnxruntime max |diff| {rep.max_abs_diff:.2e} ({rep.provider})"
        )


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise GraphPruneError(f"--round-to takes a channel multiple (8) or 'auto', got {text!r}") from None


def _example(shape: tuple[int, ...], vocab: int | None) -> torch.Tensor:
    """Random inputs of ``shape``: token ids below ``vocab`` for sequence models, else floats."""
    return torch.randint(0, vocab, shape) if vocab else torch.randn(*shape)


def _calibration(path: str) -> list:
    """Batches saved with torch.save: a list of (input, target) pairs or of dicts of forward's arguments."""
    try:
        batches = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - missing or unreadable file: torch raises many types
        raise GraphPruneError(f"--calib: cannot read {path} ({type(exc).__name__}): save a list of batches with torch.save") from exc
    if not isinstance(batches, (list, tuple)) or not batches:
        raise GraphPruneError(f"--calib: {path} holds a {type(batches).__name__}; save a non-empty list of (input, target) "
                              "or dict batches")
    return list(batches)


def _loss_fn(name: str) -> object:
    fn = getattr(torch.nn.functional, name, None)
    if not callable(fn):
        raise GraphPruneError(f"--loss names a torch.nn.functional loss (cross_entropy, mse_loss, ...), got {name!r}")
    return fn


def _option(text: str, flag: str = "--set", form: str = "KEY=VALUE (a method option, e.g. granularity=weight)") -> tuple[str, object]:
    """KEY=VALUE: a Python literal (number, bool, None, quoted string), else the text itself."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key or (flag == "--set" and not key.isidentifier()):
        raise GraphPruneError(f"{flag} takes {form}, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _list_methods(console: Console) -> None:
    for name in passes.names():
        cls = passes.get(name)
        needs = ("trains: prune with it from Python" if not cls.completes_untrained
                 else "reads --calib" if cls.reads_data or cls.trains else "data-free")
        about = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        console.print(f"[bold]{name}[/bold] ({needs}){': ' + about[0] if about else ''}\n    options: {', '.join(cls.options())}",
                      highlight=False)


SPECIALIZE_HELP = ("trace submodules whose code branches on traced values along the example input's path "
                   "(prunable, guarded to inputs that take that path) instead of keeping them opaque leaves")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line that says where help is, not a screen of usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="graphprune", description="Structured-pruning compiler for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("inspect", help="show a model's channel groups and cost model")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--dot", metavar="F", help="write the layer graph as Graphviz dot (boxes name their group ids)")
    p.add_argument("--png", metavar="F", help="draw the layers coloured and numbered by group, with a legend, to a PNG")
    p.add_argument("--html", metavar="F", help="write an interactive page (tooltips, search, zoom, click a group to "
                                               "highlight its layers); self-contained, works offline")
    p.add_argument("--plan", metavar="F", help="a plan (JSON, from prune --plan): show how many channels each group keeps")
    p.add_argument("--vocab", type=int, metavar="N", help="the model takes token ids: example inputs are ints below N")
    p.add_argument("--specialize-submodules", action="store_true", help=SPECIALIZE_HELP)
    p = sub.add_parser("prune", help="prune a model to a budget and write the slim model, plan and ONNX")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory")
    trained = [n for n in passes.names() if not passes.get(n).completes_untrained]
    p.add_argument("--method", default="l1", choices=passes.names(), metavar="METHOD",
                   help=f"pruning method: {', '.join(passes.names())} (default l1; {', '.join(trained)} train: use them from Python)")
    p.add_argument("--budget", required=True,
                   help="what the slim model keeps: a ratio of the full model (0.5), a percentage (50%%) or an absolute count (2000000)")
    p.add_argument("--metric", choices=("macs", "params"), default="macs")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's own)")
    p.add_argument("--round-to", default="auto",
                   help="keep channel counts multiples of this; auto (default): 8, or less in groups under 64 channels")
    p.add_argument("--min-channels", type=int, default=1, help="fewest channels any group keeps")
    p.add_argument("--specialize-submodules", action="store_true", help=SPECIALIZE_HELP)
    p.add_argument("--uniform-layers", action="store_true",
                   help="every layer of a repeated stack keeps the same width per role (as a config with one "
                        "intermediate_size, head count, ... describes), each layer its own best channels")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable (e.g. --method nap --metric params --set granularity=weight)")
    p.add_argument("--weights", metavar="F", help="load these weights first: a state dict (torch.save(model.state_dict())) "
                                                  "or a graphprune checkpoint (result.save)")
    p.add_argument("--vocab", type=int, metavar="N", help="the model takes token ids: example inputs are ints below N")
    p.add_argument("--ignore", action="append", metavar="LAYER", help="a module path (or prefix) whose groups stay whole, repeatable")
    p.add_argument("--ratio", action="append", metavar="LAYER=R", help="fix the keep ratio of the groups a layer produces, repeatable")
    readers = ", ".join(n for n in passes.names() if passes.get(n).completes_untrained and (passes.get(n).reads_data or passes.get(n).trains))
    p.add_argument("--calib", metavar="F", help=f"calibration batches for the methods that read data ({readers}): "
                                                "a list of (input, target) or dict batches saved with torch.save")
    p.add_argument("--loss", default="cross_entropy", help="the torch.nn.functional loss of the --calib batches (cross_entropy)")
    p.add_argument("--onnx", metavar="F", help="export the slim model to ONNX and verify it in onnxruntime")
    p.add_argument("--plan", metavar="F", help="write the pruning plan as JSON")
    p.add_argument("--save", metavar="F", help="write the plan and the pruned weights (graphprune.load reads them)")
    parser.add_argument("--list-methods", action="store_true", help="list the pruning methods and what each needs, then exit")
    if argv is None:
        argv = sys.argv[1:]
    if "--list-methods" in argv:
        _list_methods(Console())
        return 0
    args = parser.parse_args(argv)
    console = Console(stderr=args.command == "inspect" and getattr(args, "json", False))
    try:
        if args.command == "inspect":
            _inspect(args, console)
        elif args.command == "prune":
            _prune(args, console)
    except GraphPruneError as exc:  # one line on stderr: what went wrong and what to do
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
