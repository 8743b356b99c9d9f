"""The exact cost model: MACs and parameter count as polynomials in the groups' keep ratios.

Counting convention (the same as ``torch.utils.flop_counter.FlopCounterMode`` divided by two):
one MAC per multiply-accumulate of conv, conv-transpose, linear, matmul/bmm and scaled dot-product
attention; elementwise ops, norms and pooling cost nothing. Parameters are ``model.parameters()``
(buffers excluded), each counted once.

Every MAC-carrying op costs ``macs_full * prod(count_i(a) / full_i)`` over the channel maps it
scales with, and each count is linear in the ratios (a concat's count is a sum of parts, frozen
parts are constants), so the cost is a polynomial, quadratic for all the ops graphprune models.

sympy derives it: each channel map's kept share is a linear polynomial in sympy's sparse ring
``QQ[a_<group id>, ...]``, a cost term is its cost times the product of its maps' shares, and a
metric is the sum of its terms, all in exact rationals. That one polynomial per metric is compiled
once (:class:`Compiled`) into what the methods call: the exact integer evaluator (the polynomial
in kept counts over one common denominator), the float numpy and torch evaluators (the monomials
as an index matrix: a gather, a product and a dot product whatever the number of terms, where a
lambdified expression is one op per term) and the quadratic form; ``expr`` is the polynomial itself.

Other costs of the same shape join as metrics of their own (:meth:`CostModel.add_metric`): the
measured latency model (``latency.py``) is a sum of per-op terms in the same channel maps, so
every allocator and every method reads it as it reads MACs.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import sympy
import torch
from sympy.polys.domains import QQ
from sympy.polys.rings import PolyElement, PolyRing

from ..errors import BudgetError

if TYPE_CHECKING:
    from .graph import GroupGraph

Product = tuple[Sequence[np.ndarray], int]  # (channel maps' labels, integer cost at full width)


class Compiled:
    """One metric's polynomial and the evaluators compiled from it once, so that the calls in a
    method's loop do vector or integer arithmetic, never sympy's."""

    def __init__(self, poly: PolyElement, sizes: Sequence[int]):
        self.poly = poly
        #: each term's group positions, a position repeated for its power, in the polynomial's order
        self.monomials = [tuple(i for i in itertools.compress(range(len(m)), m) for _ in range(m[i])) for m in poly]
        degree = max(map(len, self.monomials), default=0)
        #: the monomials padded with len(sizes), the position of the 1 that the evaluators append to the ratios
        self.index = np.full((len(poly), max(degree, 1)), len(sizes), dtype=np.int64)
        for row, m in enumerate(self.monomials):
            self.index[row, : len(m)] = m
        self.coef = np.array([float(c) for c in poly.values()], dtype=np.float64)
        # in kept counts (a_i = k_i / size_i) over one common denominator: integer arithmetic, the same rationals
        per_count = [c / math.prod(sizes[i] for i in m) for m, c in zip(self.monomials, poly.values())]
        self.denominator = math.lcm(*(int(c.denominator) for c in per_count))
        self.numerators = [(m, int(c.numerator) * (self.denominator // int(c.denominator))) for m, c in zip(self.monomials, per_count)]


class CostModel:
    """MACs and params as exact polynomials in one keep-ratio symbol per prunable group."""

    def __init__(self, gg: "GroupGraph"):
        self._gg = gg
        self.groups = gg.prunable_groups
        self._pos = {g.id: i for i, g in enumerate(self.groups)}
        self._ring = PolyRing(sympy.symbols([f"a_{g.id}" for g in self.groups]), QQ)
        self._monomial = {g.id: self._ring.monomial_basis(i) for i, g in enumerate(self.groups)}  # a_<id>'s exponents
        self._compiled: dict[str, Compiled] = {}
        self._round_to: dict[str, int | None] = {}
        self.add_metric("macs", [([f.labels for f in t.factors], t.macs) for t in gg.mac_terms])
        self.add_metric("params", self._params_products())

    # --------------------------------------------------------------- building
    def _shares(self, maps: list[np.ndarray]) -> list[PolyElement]:
        """Kept count of each channel map divided by its full count: a linear polynomial with the
        ratio of each prunable group it holds and 1 for the channels that stay. Maps that are one
        array (a conv's output channels in its bias and its norm's parameters) share one polynomial."""
        distinct = list({id(labels): labels for labels in maps}.values())
        shares = {}
        for labels, counts in zip(distinct, self._gg.group_counts_many(distinct)):
            kept: dict[tuple[int, ...], int] = {}
            for gid, n in counts.items():
                m = self._monomial.get(gid, self._ring.zero_monom)
                kept[m] = kept.get(m, 0) + n
            shares[id(labels)] = self._ring.from_dict({m: QQ(n, len(labels)) for m, n in kept.items()})
        return [shares[id(labels)] for labels in maps]

    def _derive(self, products: Sequence[Product]) -> PolyElement:
        """The sum of ``cost * prod(kept share of each map)`` over ``products``; products of the same
        maps (a norm's weight and bias) are multiplied out once, with their costs added."""
        cost: dict[tuple[int, ...], int] = {}
        maps: dict[tuple[int, ...], Sequence[np.ndarray]] = {}
        for m, c in products:
            key = tuple(map(id, m))
            cost[key], maps[key] = cost.get(key, 0) + c, m
        shares = iter(self._shares([labels for m in maps.values() for labels in m]))
        # the cost first, as multiplying by a number is cheaper than by a polynomial; a term of no map is the number
        terms = (self._ring(math.prod([c, *(next(shares) for _ in maps[key])])) for key, c in cost.items())
        return sum(terms, self._ring.zero)

    def add_metric(self, name: str, products: Iterable[Product], round_to: int | None = None) -> None:
        """Add the cost ``name``: a sum of ``cost * prod(kept share of each channel map)`` over
        ``products``, derived and compiled as the MACs are (a MACs term is its factors' labels and
        its MACs). The measured latency model installs itself this way; ``exact``, ``evaluate``,
        ``torch`` and ``quadratic`` then take ``name`` as they take "macs". ``round_to``: the channel
        multiple the cost holds at (a latency model's measured width; see :meth:`round_to`)."""
        self._compiled[name] = Compiled(self._derive(list(products)), [g.size for g in self.groups])
        self._round_to[name] = round_to

    def round_to(self, metric: str) -> int | None:
        """The channel multiple a measured metric holds at (allocations under ``round_to="auto"``
        keep multiples of it, allocate.fitted_rounding); None for the exact counts, which hold at every width."""
        return self._round_to.get(metric)

    @property
    def metrics(self) -> list[str]:
        return list(self._compiled)

    def _params_products(self) -> list[Product]:
        """Each parameter tensor as a product: its numel, scaled by the channel maps of its pruned dims."""
        model = self._gg.traced.model  # the user's model: modules the graph never calls count too
        modules = dict(self._gg.gm.named_modules())
        by_tensor: dict[int, dict[int, np.ndarray]] = {}
        for rec in self._gg.member_records.values():
            owner = modules[rec.module] if rec.module in modules else self._gg.gm.get_submodule(rec.module)
            t = getattr(owner, rec.param)
            if isinstance(t, torch.nn.Parameter):
                by_tensor.setdefault(id(t), {}).setdefault(rec.dim, rec.labels)
        return [(list(by_tensor.get(id(p), {}).values()), p.numel()) for p in model.parameters()]

    # --------------------------------------------------------------- symbolic views
    @property
    def symbols(self) -> list[sympy.Symbol]:
        """One sympy symbol ``a_<group id>`` per prunable group, in group order."""
        return list(self._ring.symbols)

    def expr(self, metric: str = "macs") -> sympy.Expr:
        """The exact cost as a sympy expression in the symbols ``a_<group id>``."""
        return self._metric(metric).poly.as_expr()

    def quadratic(self, metric: str = "macs") -> tuple[np.ndarray, np.ndarray, float]:
        """``(F_A, F_B, c)`` with cost(a) = aᵀ F_A a + F_Bᵀ a + c, F_A symmetric, in group order."""
        compiled = self._metric(metric)
        n = len(self.groups)
        fa, fb, c = np.zeros((n, n)), np.zeros(n), 0.0
        for m, coef in zip(compiled.monomials, compiled.coef.tolist()):
            if len(m) == 0:
                c += coef
            elif len(m) == 1:
                fb[m[0]] += coef
            elif len(m) == 2:
                i, j = m
                fa[i, j] += coef / (1 if i == j else 2)
                if i != j:
                    fa[j, i] += coef / 2
            else:
                raise BudgetError(f"the {metric} model has a term of degree {len(m)}; it is not quadratic")
        return fa, fb, c

    # --------------------------------------------------------------- evaluation
    def _metric(self, metric: str) -> Compiled:
        if metric not in self._compiled:
            hint = " (a latency budget's model is added by graphprune.prepare/apply, see graphprune/export/latency.py)" if metric == "latency" else ""
            raise BudgetError(f"unknown metric {metric!r}; use one of {', '.join(self._compiled)}{hint}")
        return self._compiled[metric]

    def exact(self, metric: str, keep: Mapping[int, int] | None = None) -> int:
        """Exact cost with ``keep`` = {group id: kept channel count}; groups left out stay whole."""
        keep = keep or {}
        unknown = set(keep) - set(self._pos)
        if unknown:
            raise BudgetError(f"groups {sorted(unknown)} are not prunable groups of this model")
        compiled = self._metric(metric)
        counts = [keep.get(g.id, g.size) for g in self.groups]
        total = 0
        for m, numerator in compiled.numerators:
            for i in m:
                numerator *= counts[i]
            total += numerator
        return int(round(Fraction(total, compiled.denominator)))

    def macs(self, keep: Mapping[int, int] | None = None) -> int:
        return self.exact("macs", keep)

    def params(self, keep: Mapping[int, int] | None = None) -> int:
        return self.exact("params", keep)

    def evaluate(self, metric: str, ratios: np.ndarray) -> np.ndarray:
        """Fast float cost for keep ratios of shape (n_groups,) or (batch, n_groups)."""
        compiled = self._metric(metric)
        r = np.atleast_2d(np.asarray(ratios, dtype=np.float64))
        padded = np.concatenate([r, np.ones((r.shape[0], 1))], axis=1)
        vals = padded[:, compiled.index].prod(axis=2) @ compiled.coef
        return vals if np.ndim(ratios) > 1 else vals[0]

    def torch(self, metric: str, ratios: torch.Tensor) -> torch.Tensor:
        """Differentiable cost of keep ratios (a tensor of shape (n_groups,))."""
        compiled = self._metric(metric)
        padded = torch.cat([ratios, ratios.new_ones(1)])
        index = torch.from_numpy(compiled.index).to(ratios.device)
        return (padded[index].prod(dim=1) * torch.as_tensor(compiled.coef, dtype=ratios.dtype, device=ratios.device)).sum()

    def prunable_share(self, metric: str = "macs") -> float:
        """Share of the full cost that shrinks when the prunable groups shrink (1 - cost(0)/cost(1))."""
        poly = self._metric(metric).poly
        full = sum(poly.values(), QQ.zero)
        return float(1 - poly.get(poly.ring.zero_monom, QQ.zero) / full) if full else 0.0

    def ratios(self, keep: Mapping[int, int] | None = None) -> np.ndarray:
        keep = keep or {}
        return np.array([keep.get(g.id, g.size) / g.size for g in self.groups], dtype=np.float64)
