"""graphprune: a structured-pruning compiler for PyTorch.

``analyze`` traces a model, finds its channel groups (channels that must be pruned together) and
derives the exact MACs/params model in the groups' keep ratios; ``apply`` and ``prepare`` run a
method on it and slim the model.

One subpackage per stage, in the order a model goes through them: ``tracing``, ``analysis``,
``groups``, ``budget``, ``slimming``, ``passes`` (the methods), ``rebuild`` (the user's own class),
``export``; ``training`` holds the loop and data they share. A module imports only its own or an
earlier stage, and what all of them read (``errors``, ``ops``, ``common``). ``op_table`` (the
built-in ops, whose entries name functions of several stages), ``api`` and ``cli`` sit on top.
"""

from . import op_table  # noqa: F401  (defines the built-in ops: every stage looks them up)
from .common import distributed
from .training import data
from .api import PruneReport, PruneResult, Session, apply, apply_plan, prepare
from .budget.targets import Budget, Runtime
from .groups.cost import CostModel
from .rebuild.checkpoint import load
from .errors import (BudgetError, DistributedError, ExampleInputError, ExportError, GraphPruneError, GuardError, ModelRebuildError,
                     ModelSpecError, NotReadyError, OptionError, PlanError, SlimError, TraceError, WidenError)
from .groups.graph import ChannelGroup, GroupGraph, Member, analyze
from .export.onnx import ExportReport, export_onnx
from .ops import register_op, unregister_op
from .groups.plan import Plan
from .slimming.slim import slim
from .tracing.tracer import trace
from .training.train import EpochRecord, accuracy, fit, seed_everything
from .slimming.widen import Widened, widen

__all__ = [
    "analyze",
    "data",
    "distributed",
    "apply",
    "apply_plan",
    "load",
    "prepare",
    "register_op",
    "unregister_op",
    "Session",
    "PruneResult",
    "PruneReport",
    "Budget",
    "Runtime",
    "slim",
    "export_onnx",
    "ExportReport",
    "Plan",
    "PlanError",
    "SlimError",
    "widen",
    "Widened",
    "WidenError",
    "trace",
    "fit",
    "accuracy",
    "seed_everything",
    "EpochRecord",
    "GroupGraph",
    "ChannelGroup",
    "Member",
    "CostModel",
    "GraphPruneError",
    "TraceError",
    "ExampleInputError",
    "BudgetError",
    "ExportError",
    "ModelSpecError",
    "DistributedError",
    "GuardError",
    "ModelRebuildError",
    "NotReadyError",
    "OptionError",
]
__version__ = "0.1.0"
