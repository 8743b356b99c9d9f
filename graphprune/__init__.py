"""graphprune: a structured-pruning compiler for PyTorch.

``analyze`` traces a model, finds its channel groups (channels that must be pruned together) and
derives the exact MACs/params model in the groups' keep ratios.
"""

from . import op_table  # noqa: F401  (defines the built-in ops: every stage looks them up)
from .api import PruneReport, PruneResult, Session, apply, apply_plan, prepare
from .budget import Budget, Runtime
from .cost import CostModel
from .checkpoint import load
from .errors import (BudgetError, DistributedError, ExampleInputError, ExportError, GraphPruneError, GuardError, ModelRebuildError,
                     ModelSpecError, NotReadyError, OptionError, PlanError, SlimError, TraceError, WidenError)
from .groups import ChannelGroup, GroupGraph, Member, analyze
from .export import ExportReport, export_onnx
from .ops import register_op, unregister_op
from .plan import Plan
from .slim import slim
from .trace import trace
from .train import EpochRecord, accuracy, fit, seed_everything
from .widen import Widened, widen

__all__ = [
    "analyze",
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
