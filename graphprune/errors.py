"""Exceptions raised by graphprune. Every message says what the user can do about it."""


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on purpose."""


class TraceError(GraphPruneError):
    """The model could not be turned into an fx graph, even with leaf-module fallbacks."""


class ExampleInputError(GraphPruneError):
    """Running the traced model on the example inputs failed (usually a wrong input shape)."""


class BudgetError(GraphPruneError):
    """A pruning budget cannot be met."""


class ExportError(GraphPruneError):
    """ONNX export or its onnxruntime verification failed."""


class ModelSpecError(GraphPruneError):
    """A MODEL string on the command line does not name a model graphprune can build."""


class GuardError(GraphPruneError):
    """A graph traced along the example inputs' path got an input that takes another path."""


class DistributedError(GraphPruneError):
    """A collective operation across ranks failed or timed out (usually: another rank failed first)."""


class OptionError(GraphPruneError, TypeError):
    """An option graphprune does not know, or a value it cannot take (a TypeError too, as Python's own are)."""


class NotReadyError(GraphPruneError):
    """A method was asked for its plan before it could decide one (a search that never ran)."""


class ModelRebuildError(GraphPruneError):
    """The plan cannot be carried over to the user's own model class (its code fixes a size the plan changes)."""


class PlanError(GraphPruneError):
    """A plan does not fit the model it is applied to."""


class SlimError(GraphPruneError):
    """The slim graph does not have the shapes the plan implies."""


class WidenError(GraphPruneError):
    """A model cannot be widened as asked: a bad factor, or a wide graph without the shapes the widened groups imply."""
