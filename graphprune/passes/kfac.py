"""K-FAC statistics: Kronecker factors of the Fisher of every conv/linear layer (NAP's curvature).

For a layer s = W ā (ā the input with an appended 1 when the layer has a bias), the Fisher block of
vec(W) is approximated by A ⊗ S (Martens & Grosse 2015), with

    A = E[Σ_t ā_t ā_tᵀ]            (input patches; t runs over positions: spatial positions of a
                                      conv's unfolded patches, Grosse & Martens 2016, or the extra
                                      dims of a linear layer's input; t is one position otherwise)
    S = E[(1/|T|) Σ_t g_t g_tᵀ]     (g_t = ∂(-log p(y|x)) / ∂s_t, the pre-activation gradient)

both per sample, as exponential moving averages over batches (decay 0.95, NAP Sec. 3.2; the first
batch initializes them, so there is no bias towards zero). ``vec`` is column-major, so the Fisher
entry of W[i, j] is A[j, j] S[i, i] and [F⁻¹]_qq = [S⁻¹]_ii [A⁻¹]_jj.

Labels. ``fisher="true"`` (default, the paper's: "the expectation is taken with respect to the
model distribution"): after each forward pass that collects, labels are drawn from the model's own
predictive distribution (``likelihood="categorical"``: a softmax over dim 1 of the output, per
position for dense outputs; ``"gaussian"``: unit-variance noise around the output) and a separate
backward of that sampled loss (summed over the batch, so g is per sample) reaches the layers; the
training's own backward does not touch the statistics, and no ``.grad`` is written.
``fisher="empirical"`` uses the gradients of the training loss as they pass (assumed to be a mean
over the batch, as ``cross_entropy`` is: they are scaled back by the batch size).

Parameters outside conv/linear layers (BatchNorm scales and shifts, transposed or 3-d convolution
weights) get a diagonal Fisher instead, from the batch gradient of the summed sampled loss: under
the true Fisher the per-sample gradients have zero mean, so (Σ_n g_n)² / N is an unbiased estimate
of the diagonal. For the empirical Fisher it is N · (mean gradient)², which also counts the squared
mean gradient (it vanishes at a minimum).

Damping (``damping`` = λ, default 1e-3): each factor gets λ times its mean eigenvalue (trace / dim)
added to its diagonal before it is inverted. That is Tikhonov damping split between the factors by
π (Martens & Grosse 2015, Sec. 6.3): A + π√γ I and S + √γ/π I with π² = (tr A / d_A) / (tr S / d_S)
and γ = λ² (tr A / d_A)(tr S / d_S), so it is relative to the curvature's scale and needs no tuning
per model. Inverses are computed in float64 (Cholesky).

Memory. A factor whose g · d² elements exceed ``max_factor_elements`` (default 2^26, 64M) is kept
block-diagonal: diagonal blocks of b ≈ limit / (g · d) consecutive indices (the largest b whose
blocks fit the limit; for a conv, b / k² input channels' patches), or its diagonal when b would be 1
(a diagonal factor may exceed the limit: g · d elements). ``memory()`` lists every factor's
kind and size; ``KFAC.elements`` is the total.

Grouped and depthwise convolutions: one pair of factors per convolution group (the Fisher is block
diagonal over groups, since each group's weights see only their own inputs); a depthwise conv
has g = C groups of a (k² + 1)-square A and a 1 × 1 S.

Under torchrun each rank estimates the step's factors on its own batch and ``commit`` averages the
estimates over the ranks before they enter the moving averages, so every rank holds the factors of
the global batch (the sampled labels are drawn independently on each rank).

Statistics are only collected while ``collecting`` is set (and, with ``train_only``, the model is in
training mode) in forward passes with gradients enabled: evaluation passes change nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune.common.distributed import all_reduce_mean, rank, world_size
from graphprune.errors import GraphPruneError
from graphprune.ops import module_is

CHUNK = 1 << 24  # elements of unfolded patches processed at once


def covered(module: nn.Module) -> bool:
    """Whether K-FAC factors this layer (Linear, Conv1d, Conv2d; transposed and 3-d convs are not)."""
    return module_is(module, "kfac")  # op_table.py; the rest get a diagonal Fisher


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """A layer as g matrices W̄_j of rows x cols: rows = output channels per group, cols = the
    unfolded inputs per group (in / g · prod(kernel)) plus one for the bias."""

    groups: int
    rows: int
    cols: int
    bias: bool

    @classmethod
    def of(cls, module: nn.Module) -> "LayerShape":
        w = module.weight
        bias = getattr(module, "bias", None) is not None
        g = module.groups if isinstance(module, nn.modules.conv._ConvNd) else 1
        return cls(g, w.shape[0] // g, w[0].numel() + int(bias), bias)


def weight_matrix(module: nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The layer's (g, rows, cols) matrices [W_j | b_j]."""
    shape = LayerShape.of(module)
    w = module.weight.detach().to(dtype).reshape(shape.groups, shape.rows, -1)
    if shape.bias:
        w = torch.cat([w, module.bias.detach().to(dtype).reshape(shape.groups, shape.rows, 1)], -1)
    return w


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write (g, rows, cols) matrices back into the layer's weight (and bias)."""
    shape = LayerShape.of(module)
    with torch.no_grad():
        w = matrix[..., : shape.cols - int(shape.bias)] if shape.bias else matrix
        module.weight.copy_(w.reshape(module.weight.shape).to(module.weight.dtype))
        if shape.bias:
            module.bias.copy_(matrix[..., -1].reshape(-1).to(module.bias.dtype))


def parameter_views(module: nn.Module, matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """(g, rows, cols) per-entry values split back into the shapes of ``weight`` and ``bias``."""
    shape = LayerShape.of(module)
    views = {"weight": (matrix[..., :-1] if shape.bias else matrix).reshape(module.weight.shape)}
    if shape.bias:
        views["bias"] = matrix[..., -1].reshape(-1)
    return views


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (samples x positions, features) rows, in the weight's column order."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    pad = module._reversed_padding_repeated_twice  # explicit padding (also for 'same' and non-zero modes)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):
        x, kernel, stride, dilation = x.unsqueeze(-2), (1, *kernel), (1, *stride), (1, *dilation)
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (N, C * K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class Factor:
    """One symmetric d x d factor per group of a layer, stored as diagonal blocks (g, nb, b, b).

    ``kind`` is "full" (one block), "block-diagonal" or "diagonal" (b = 1), chosen so that the
    stored elements stay within ``limit``.
    """

    def __init__(self, groups: int, dim: int, limit: int):
        self.groups, self.dim = groups, dim
        block = dim if groups * dim * dim <= limit else max(1, limit // (groups * dim))
        while block > 1 and groups * math.ceil(dim / block) * block * block > limit:  # the padded last block counts too
            block -= 1
        self.block, self.nblocks = block, math.ceil(dim / block)
        self.kind = "full" if self.nblocks == 1 else ("diagonal" if block == 1 else "block-diagonal")
        self.blocks: torch.Tensor | None = None  # allocated by the first update, on the data's device

    @property
    def numel(self) -> int:
        return self.groups * self.nblocks * self.block * self.block

    def estimate(self, rows: torch.Tensor) -> torch.Tensor:
        """Σ_m r_m r_mᵀ of (M, g, d) rows, as blocks."""
        m = rows.shape[0]
        pad = self.nblocks * self.block - self.dim
        if pad:
            rows = F.pad(rows, (0, pad))
        r = rows.reshape(m, self.groups, self.nblocks, self.block)
        est = torch.einsum("mgnb,mgnc->gnbc", r, r)
        return (est + est.transpose(-1, -2)) / 2  # exactly symmetric (float32 sums are not; Cholesky reads one triangle)

    def update(self, estimate: torch.Tensor, decay: float) -> None:
        if self.blocks is None or self.blocks.device != estimate.device:
            self.blocks = estimate.clone()
        else:
            self.blocks.mul_(decay).add_(estimate, alpha=1 - decay)

    def dense(self) -> torch.Tensor:
        """(g, d, d); for tests and small layers."""
        if self.blocks is None:
            raise GraphPruneError("this K-FAC factor has no statistics yet")
        return _dense(self.blocks, self.dim)

    def inverse(self, alive: torch.Tensor | None, damping: float) -> "Inverse":
        """The damped inverse of the factor restricted to the ``alive`` (g, d) indices (the rest decoupled, 0).

        Restricting is the inverse of the kept sub-block, the curvature of the weights that are
        still free once the others are fixed at zero."""
        g, nb, b = self.groups, self.nblocks, self.block
        device = self.blocks.device if self.blocks is not None else (alive.device if alive is not None else "cpu")
        blocks = (self.blocks.double() if self.blocks is not None
                  else torch.eye(b, dtype=torch.float64, device=device).expand(g, nb, b, b).clone())
        live = torch.ones(g, self.dim, dtype=torch.bool, device=device) if alive is None else alive.to(device)
        live = F.pad(live, (0, nb * b - self.dim)).reshape(g, nb, b)  # padding is never alive
        both = live[..., :, None] & live[..., None, :]
        blocks = blocks * both
        diag = blocks.diagonal(dim1=-2, dim2=-1)
        counted = live.sum((1, 2)).clamp_min(1)
        mean = (diag * live).sum((1, 2)) / counted
        shift = (damping * mean).clamp_min(1e-12 * float(mean.abs().max().clamp_min(1e-30)))
        shift = torch.where(mean > 0, shift, torch.ones_like(shift))  # a factor that saw nothing: identity
        blocks = blocks + torch.diag_embed(torch.where(live, shift[:, None, None], torch.ones_like(diag)))
        return Inverse(_spd_inverse(blocks) * both, self.dim)


def _dense(blocks: torch.Tensor, dim: int) -> torch.Tensor:
    g, nb, b, _ = blocks.shape
    out = blocks.new_zeros(g, nb * b, nb * b)
    for n in range(nb):
        out[:, n * b : (n + 1) * b, n * b : (n + 1) * b] = blocks[:, n]
    return out[:, :dim, :dim]


def _spd_inverse(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric positive definite blocks (Cholesky; eigendecomposition if that fails)."""
    chol, info = torch.linalg.cholesky_ex(blocks)
    if not bool((info == 0).all()):
        vals, vecs = torch.linalg.eigh(blocks)
        floor = vals.amax(-1, keepdim=True).clamp_min(1e-30) * 1e-12
        return (vecs / vals.clamp_min(0).maximum(floor).unsqueeze(-2)) @ vecs.transpose(-1, -2)
    return torch.cholesky_inverse(chol)


class Inverse:
    """A factor's damped inverse in the factor's block layout, with the products NAP needs."""

    def __init__(self, blocks: torch.Tensor, dim: int):
        self.blocks, self.dim = blocks, dim
        self.groups, self.nblocks, self.block = blocks.shape[0], blocks.shape[1], blocks.shape[2]

    def diag(self) -> torch.Tensor:
        """(g, d)."""
        return self.blocks.diagonal(dim1=-2, dim2=-1).reshape(self.groups, -1)[:, : self.dim]

    def rows(self, j: int, index: torch.Tensor) -> torch.Tensor:
        """Dense rows ``index`` of group ``j``'s inverse: (len(index), d)."""
        b = self.block
        index = index.to(self.blocks.device)
        n, o = index // b, index % b
        out = self.blocks.new_zeros(len(index), self.nblocks * b)
        cols = n[:, None] * b + torch.arange(b, device=index.device)
        out.scatter_(1, cols, self.blocks[j, n, o, :])
        return out[:, : self.dim]

    def sub(self, j: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.rows(j, rows)[:, cols.to(self.blocks.device)]

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """x @ inverse for (g, m, d) x, per group."""
        g, m, _ = x.shape
        pad = self.nblocks * self.block - self.dim
        xp = F.pad(x, (0, pad)).reshape(g, m, self.nblocks, self.block)
        return torch.einsum("gmnb,gnbc->gmnc", xp, self.blocks).reshape(g, m, -1)[..., : self.dim]

    def left(self, x: torch.Tensor) -> torch.Tensor:
        """inverse @ x for (g, d, m) x (the inverse is symmetric)."""
        return self.right(x.transpose(1, 2)).transpose(1, 2)

    def dense(self) -> torch.Tensor:
        return _dense(self.blocks, self.dim)


@dataclasses.dataclass
class FactorMemory:
    layer: str
    groups: int
    a_dim: int
    a_kind: str
    a_elements: int
    s_dim: int
    s_kind: str
    s_elements: int

    @property
    def elements(self) -> int:
        return self.a_elements + self.s_elements


class _Pending:
    """Batch estimates of one step, averaged when committed."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def take(self) -> torch.Tensor | None:
        value = None if self.total is None else self.total / self.count
        self.total, self.count = None, 0
        return value


class KFAC:
    """Hooks on ``layers`` (conv/linear module names of ``model``) that keep their K-FAC factors,
    and a diagonal Fisher for ``diagonal`` parameters ((module, parameter) names)."""

    def __init__(self, model: nn.Module, layers: Iterable[str], diagonal: Iterable[tuple[str, str]] = (), *,
                 decay: float = 0.95, damping: float = 1e-3, fisher: str = "true", likelihood: str = "categorical",
                 label_samples: int = 1, max_factor_elements: int = 1 << 26, seed: int = 0):
        if fisher not in ("true", "empirical"):
            raise GraphPruneError(f"fisher must be 'true' (labels sampled from the model) or 'empirical' (the training labels), got {fisher!r}")
        if likelihood not in ("categorical", "gaussian"):
            raise GraphPruneError(f"likelihood must be 'categorical' (softmax over dim 1) or 'gaussian' (regression), got {likelihood!r}")
        if not 0.0 <= decay < 1.0 or damping <= 0 or label_samples < 1 or max_factor_elements < 1:
            raise GraphPruneError("K-FAC: need 0 <= decay < 1, damping > 0, label_samples >= 1 and max_factor_elements >= 1")
        self.model, self.decay, self.damping = model, decay, damping
        self.fisher, self.likelihood, self.label_samples = fisher, likelihood, label_samples
        self.limit, self.seed = max_factor_elements, seed
        self.layers = list(layers)
        for name in self.layers:
            if not covered(model.get_submodule(name)):
                raise GraphPruneError(f"K-FAC factors conv1d/conv2d/linear layers; {name!r} is a {type(model.get_submodule(name)).__name__}")
        self.shapes = {name: LayerShape.of(model.get_submodule(name)) for name in self.layers}
        self.a = {n: Factor(s.groups, s.cols, self.limit) for n, s in self.shapes.items()}
        self.s = {n: Factor(s.groups, s.rows, self.limit) for n, s in self.shapes.items()}
        self.diagonal_names = list(diagonal)
        self.diag: dict[tuple[str, str], torch.Tensor] = {}
        self.collecting = False
        self.train_only = True
        self.updates = 0  # committed batches
        self.last_labels: list[torch.Tensor] = []  # the labels the last collecting pass sampled
        self.last_loss: float | None = None  # their summed negative log-likelihood per sample
        self._handles: list[Any] = []
        self._pending_a = {n: _Pending() for n in self.layers}
        self._pending_s = {n: _Pending() for n in self.layers}
        self._pending_diag = {k: _Pending() for k in self.diagonal_names}
        self._seen = False  # a layer collected in the current forward pass
        self._sampling = False  # the sampled-label backward is running
        self._batch = 1
        self._generators: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------- hooks
    def attach(self) -> None:
        for name in self.layers:
            self._handles.append(self.model.get_submodule(name).register_forward_hook(self._layer_hook(name)))
        self._handles.append(self.model.register_forward_hook(self._root_hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _active(self) -> bool:
        return self.collecting and torch.is_grad_enabled() and (self.model.training or not self.train_only)

    def _layer_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if not self._active() or not isinstance(output, torch.Tensor) or not inputs:
                return
            x = inputs[0]
            with torch.no_grad():
                n = x.shape[0]
                self._pending_a[name].add(self._input_estimate(name, module, x.detach()) / n)
            self._seen = True
            if output.requires_grad:
                output.register_hook(self._grad_hook(name, n))

        return hook

    def _input_estimate(self, name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Σ over samples and positions of ā ā^T, by chunks of samples (unfolded patches can be large)."""
        shape, factor, total = self.shapes[name], self.a[name], None
        per_sample = max(1, x[0].numel() * math.prod(getattr(module, "kernel_size", (1,))))
        step = max(1, CHUNK // per_sample)
        for lo in range(0, x.shape[0], step):
            rows = patches(module, x[lo : lo + step].float())
            rows = rows.reshape(rows.shape[0], shape.groups, -1)
            if shape.bias:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], shape.groups, 1)], -1)
            est = factor.estimate(rows)
            total = est if total is None else total + est
        return total

    def _grad_hook(self, name: str, n: int):
        def hook(grad: torch.Tensor) -> None:
            if self._sampling != (self.fisher == "true"):
                return  # the true Fisher ignores the training's backward, the empirical one the sampled
            shape = self.shapes[name]
            with torch.no_grad():
                g = grad.detach().float()
                if self.fisher == "empirical":
                    g = g * n  # per-sample gradients of a loss averaged over the batch
                module = self.model.get_submodule(name)
                rows = g.movedim(1, -1).reshape(-1, g.shape[1]) if not isinstance(module, nn.Linear) else g.reshape(-1, g.shape[-1])
                rows = rows.reshape(rows.shape[0], shape.groups, shape.rows)
                self._pending_s[name].add(self.s[name].estimate(rows) / rows.shape[0])

        return hook

    def _root_hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if not self._seen:
            return
        self._seen = False
        if self.fisher == "empirical":
            self._batch = _batch_size(output)
            return  # committed after the training's backward (``after_backward``)
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or (self.likelihood == "categorical" and output.dim() < 2):
            raise GraphPruneError(
                "nap's true Fisher samples labels from the model's output, which must be a tensor of logits (N, classes, ...) "
                f"(or pass likelihood='gaussian' for regression); this model returns {type(output).__name__}"
                f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}: pass fisher='empirical' to use the training loss instead")
        if not output.requires_grad:
            return
        wanted = [self.model.get_submodule(n).weight for n in self.layers]
        wanted = [w for w in wanted if w.requires_grad]
        diag = [getattr(self.model.get_submodule(m), p) for m, p in self.diagonal_names]
        diag_live = [i for i, t in enumerate(diag) if t.requires_grad]
        inputs_ = wanted + [diag[i] for i in diag_live]
        if not inputs_:
            return
        self.last_labels, losses = [], []
        n = output.shape[0]
        for _ in range(self.label_samples):
            loss = self._sampled_loss(output)
            losses.append(float(loss.detach()) / n)
            self._sampling = True
            try:
                grads = torch.autograd.grad(loss, inputs_, retain_graph=True, allow_unused=True)
            finally:
                self._sampling = False
            for k, i in enumerate(diag_live):
                g = grads[len(wanted) + k]
                if g is not None:
                    self._pending_diag[self.diagonal_names[i]].add(g.detach().float().square() / n)
        self.last_loss = sum(losses) / len(losses)
        self.commit()

    def _sampled_loss(self, output: torch.Tensor) -> torch.Tensor:
        gen = self._generator(output.device)
        out = output.float()
        with torch.no_grad():
            if self.likelihood == "categorical":
                probs = torch.softmax(out.detach(), 1).movedim(1, -1)
                labels = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).reshape(probs.shape[:-1])
            else:
                labels = out.detach() + torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
        self.last_labels.append(labels)
        if self.likelihood == "categorical":
            return F.cross_entropy(out, labels, reduction="sum")
        return 0.5 * (out - labels).square().sum()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed + rank())  # independent draws per rank
        return self._generators[device]

    # ------------------------------------------------------------- statistics
    def after_backward(self) -> None:
        """Empirical Fisher: fold in the step's statistics once the training's backward ran."""
        if self.fisher != "empirical":
            return
        n = self._batch * world_size()  # under DDP the gradient is already the mean over every rank's batch
        for key in self.diagonal_names:
            t = getattr(self.model.get_submodule(key[0]), key[1])
            if isinstance(t, torch.Tensor) and t.grad is not None and any(p.count for p in self._pending_a.values()):
                self._pending_diag[key].add(t.grad.detach().float().square() * n)
        self.commit()

    def commit(self) -> None:
        """Fold the pending batch estimates, averaged over the ranks, into the moving averages."""
        committed = False
        for name in self.layers:
            for factor, pending in ((self.a[name], self._pending_a[name]), (self.s[name], self._pending_s[name])):
                value = pending.take()
                if value is not None:
                    factor.update(all_reduce_mean(value), self.decay)
                    committed = True
        for key in self.diagonal_names:
            value = self._pending_diag[key].take()
            if value is not None:
                value = all_reduce_mean(value)
                old = self.diag.get(key)
                self.diag[key] = value.clone() if old is None or old.device != value.device else old.mul_(self.decay).add_(value, alpha=1 - self.decay)
        self.updates += int(committed)

    def reset(self) -> None:
        """Forget the statistics (the factors are estimated afresh)."""
        for f in (*self.a.values(), *self.s.values()):
            f.blocks = None
        self.diag.clear()
        for p in (*self._pending_a.values(), *self._pending_s.values(), *self._pending_diag.values()):
            p.take()
        self.updates = 0

    def inverses(self, name: str, rows_alive: torch.Tensor | None = None, cols_alive: torch.Tensor | None = None) -> tuple[Inverse, Inverse]:
        """Damped (S⁻¹, A⁻¹) of one layer, restricted to the alive output rows (g, rows) and input columns (g, cols)."""
        return self.s[name].inverse(rows_alive, self.damping), self.a[name].inverse(cols_alive, self.damping)

    def diagonal_fisher(self, key: tuple[str, str]) -> torch.Tensor | None:
        return self.diag.get(key)

    # ------------------------------------------------------------- memory
    def memory(self) -> list[FactorMemory]:
        return [FactorMemory(n, s.groups, s.cols, self.a[n].kind, self.a[n].numel, s.rows, self.s[n].kind, self.s[n].numel)
                for n, s in self.shapes.items()]

    @property
    def elements(self) -> int:
        """Stored factor elements (float32 each), diagonal Fisher entries included."""
        diag = sum(getattr(self.model.get_submodule(m), p).numel() for m, p in self.diagonal_names)
        return sum(r.elements for r in self.memory()) + diag


def _batch_size(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.shape[0] if output.dim() else 1
    if isinstance(output, (tuple, list)) and output:
        return _batch_size(output[0])
    if isinstance(output, dict) and output:
        return _batch_size(next(iter(output.values())))
    return 1


__all__ = ["KFAC", "Factor", "Inverse", "LayerShape", "FactorMemory", "covered", "patches", "weight_matrix",
           "set_weight_matrix", "parameter_views"]
