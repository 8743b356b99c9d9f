"""The exact cost model: MACs and parameter count as polynomials in the groups' keep ratios.

Counting convention (the same as ``torch.utils.flop_counter.FlopCounterMode`` divided by two):
one MAC per multiply-accumulate of conv, conv-transpose, linear, matmul/bmm and scaled dot-product
attention; elementwise ops, norms and pooling cost nothing. Parameters are ``model.parameters()``
(buffers excluded), each counted once.

Every MAC-carrying op costs ``macs_full * prod(count_i(a) / full_i)`` over the channel maps it
scales with, and each count is linear in the ratios (a concat's count is a sum of parts, frozen
parts are constants), so the cost is a polynomial, quadratic for all the ops graphprune models.
Coefficients are exact fractions; with integer channel counts the evaluation is an exact integer.

Other costs of the same shape join as metrics of their own (:meth:`BudgetModel.add_metric`): the
measured latency model (``latency.py``) is a sum of per-op terms in the same channel maps, so
every allocator and every method reads it as it reads MACs.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import BudgetError

if TYPE_CHECKING:
    import sympy

    from .groups import GroupGraph

Poly = dict[tuple[int, ...], Fraction]  # sorted tuple of group positions -> coefficient
Product = tuple[Sequence[np.ndarray], int]  # (channel maps' labels, integer cost at full width)


Form = tuple[dict[tuple[int, ...], int], int]  # integer numerators per monomial, one denominator


class _Accumulator:
    """Sums products of linear forms exactly, in integers: a product of forms with denominators
    f_1..f_k has the denominator f_1*...*f_k, so its numerators add up as integers, and each
    monomial keeps one integer sum per distinct denominator until the coefficients are read.
    Monomials keep the order in which they first appear."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, ...], dict[int, int]] = {}

    def add_product(self, forms: list[Form], scale: int) -> None:
        p: dict[tuple[int, ...], int] = {(): 1}
        denominator = 1
        for form, full in forms:
            out: dict[tuple[int, ...], int] = {}
            for m1, c1 in p.items():
                for m2, c2 in form.items():
                    m = tuple(sorted(m1 + m2)) if m1 and m2 else m1 or m2
                    out[m] = out.get(m, 0) + c1 * c2
            p, denominator = out, denominator * full
        for m, c in p.items():
            per = self.sums.setdefault(m, {})
            per[denominator] = per.get(denominator, 0) + c * scale

    def poly(self) -> Poly:
        out: Poly = {}
        for m, per in self.sums.items():  # over the lcm of the denominators: one Fraction per monomial
            common = math.lcm(*per)
            out[m] = Fraction(sum(n * (common // d) for d, n in per.items()), common)
        return out


class BudgetModel:
    """MACs and params as exact polynomials in one keep-ratio symbol per prunable group."""

    def __init__(self, gg: "GroupGraph"):
        self._gg = gg
        self.groups = gg.prunable_groups
        self._pos = {g.id: i for i, g in enumerate(self.groups)}
        self._symbols: list | None = None
        self._polys: dict[str, Poly] = {"macs": self._macs_poly(), "params": self._params_poly()}
        self._compiled = {k: self._compile(p) for k, p in self._polys.items()}
        self._integer: dict[str, tuple[list[tuple[tuple[int, ...], int]], int]] = {}
        self._round_to: dict[str, int | None] = {}

    # --------------------------------------------------------------- building
    def _linear_forms(self, maps: list[np.ndarray]) -> list[Form]:
        """Kept count of each channel map divided by its full count, linear in the ratios: numerators
        per monomial (a group's position, or () for the channels that stay) over the full count.
        Maps that are one array (a conv's output channels in its bias and its norm's parameters)
        share one form."""
        distinct = list({id(labels): labels for labels in maps}.values())
        forms: dict[int, Form] = {}
        for labels, counts in zip(distinct, self._gg.group_counts_many(distinct)):
            form: dict[tuple[int, ...], int] = {}
            for gid, n in counts.items():
                key = (self._pos[gid],) if gid in self._pos else ()
                form[key] = form.get(key, 0) + n
            forms[id(labels)] = (form, len(labels))
        return [forms[id(labels)] for labels in maps]

    def _macs_poly(self) -> Poly:
        return self._products_poly([([f.labels for f in t.factors], t.macs) for t in self._gg.mac_terms])

    def _products_poly(self, products: Sequence[Product]) -> Poly:
        """The sum of ``cost * prod(kept share of each map)`` over ``products``."""
        forms = iter(self._linear_forms([labels for maps, _ in products for labels in maps]))
        acc = _Accumulator()
        for maps, cost in products:
            acc.add_product([next(forms) for _ in maps], cost)
        return acc.poly()

    def add_metric(self, name: str, products: Iterable[Product], round_to: int | None = None) -> None:
        """Add the cost ``name``: a sum of ``cost * prod(kept share of each channel map)`` over
        ``products``, built as the MACs are (a MACs term is its factors' labels and its MACs). The
        measured latency model installs itself this way; ``exact``, ``evaluate``, ``torch`` and
        ``quadratic`` then take ``name`` as they take "macs". ``round_to``: the channel multiple
        the cost holds at (a latency model's measured width; see :meth:`round_to`)."""
        self._polys[name] = self._products_poly(list(products))
        self._compiled[name] = self._compile(self._polys[name])
        self._integer.pop(name, None)
        self._round_to[name] = round_to

    def round_to(self, metric: str) -> int | None:
        """The channel multiple a measured metric holds at (allocations under ``round_to="auto"``
        keep multiples of it, allocate.fitted_rounding); None for the exact counts, which hold at every width."""
        return self._round_to.get(metric)

    @property
    def metrics(self) -> list[str]:
        return list(self._polys)

    def _params_poly(self) -> Poly:
        model = self._gg.traced.model  # the user's model: modules the graph never calls count too
        modules = dict(self._gg.gm.named_modules())
        by_tensor: dict[int, dict[int, np.ndarray]] = {}
        for rec in self._gg.member_records.values():
            owner = modules[rec.module] if rec.module in modules else self._gg.gm.get_submodule(rec.module)
            t = getattr(owner, rec.param)
            if isinstance(t, torch.nn.Parameter):
                by_tensor.setdefault(id(t), {}).setdefault(rec.dim, rec.labels)
        params = list(model.parameters())
        dims = [list(by_tensor.get(id(p), {}).values()) for p in params]
        forms = iter(self._linear_forms([labels for d in dims for labels in d]))
        acc = _Accumulator()
        for p, d in zip(params, dims):
            acc.add_product([next(forms) for _ in d], p.numel())
        return acc.poly()

    def _compile(self, poly: Poly) -> tuple[np.ndarray, np.ndarray]:
        """Monomials as an index matrix (-1 = padding) and float coefficients, for vector evaluation."""
        degree = max((len(m) for m in poly), default=0)
        idx = np.full((len(poly), max(degree, 1)), -1, dtype=np.int64)
        coef = np.empty(len(poly), dtype=np.float64)
        for row, (m, c) in enumerate(poly.items()):
            idx[row, : len(m)] = m
            coef[row] = float(c)
        return idx, coef

    # --------------------------------------------------------------- symbolic views
    @property
    def symbols(self) -> list["sympy.Symbol"]:
        """One sympy symbol ``a_<group id>`` per prunable group, in group order (sympy loads on first use)."""
        if self._symbols is None:
            import sympy

            self._symbols = list(sympy.symbols([f"a_{g.id}" for g in self.groups])) if self.groups else []
        return self._symbols

    def expr(self, metric: str = "macs") -> "sympy.Expr":
        """The exact cost as a sympy expression in the symbols ``a_<group id>``."""
        import sympy

        terms = []
        for m, c in self._poly(metric).items():
            terms.append(sympy.Rational(c.numerator, c.denominator) * sympy.Mul(*[self.symbols[i] for i in m]))
        return sympy.Add(*terms)

    def quadratic(self, metric: str = "macs") -> tuple[np.ndarray, np.ndarray, float]:
        """``(F_A, F_B, c)`` with cost(a) = aᵀ F_A a + F_Bᵀ a + c, F_A symmetric, in group order."""
        n = len(self.groups)
        fa, fb, c = np.zeros((n, n)), np.zeros(n), 0.0
        for m, coef in self._poly(metric).items():
            if len(m) == 0:
                c += float(coef)
            elif len(m) == 1:
                fb[m[0]] += float(coef)
            elif len(m) == 2:
                i, j = m
                fa[i, j] += float(coef) / (1 if i == j else 2)
                if i != j:
                    fa[j, i] += float(coef) / 2
            else:
                raise BudgetError(f"the {metric} model has a term of degree {len(m)}; it is not quadratic")
        return fa, fb, c

    # --------------------------------------------------------------- evaluation
    def _poly(self, metric: str) -> Poly:
        if metric not in self._polys:
            hint = " (a latency budget's model is added by graphprune.prepare/apply, see graphprune/latency.py)" if metric == "latency" else ""
            raise BudgetError(f"unknown metric {metric!r}; use one of {', '.join(self._polys)}{hint}")
        return self._polys[metric]

    def exact(self, metric: str, keep: Mapping[int, int] | None = None) -> int:
        """Exact cost with ``keep`` = {group id: kept channel count}; groups left out stay whole."""
        keep = keep or {}
        unknown = set(keep) - set(self._pos)
        if unknown:
            raise BudgetError(f"groups {sorted(unknown)} are not prunable groups of this model")
        terms, denominator = self._integer_form(metric)
        counts = [keep.get(g.id, g.size) for g in self.groups]
        total = 0
        for m, numerator in terms:
            for i in m:
                numerator *= counts[i]
            total += numerator
        return int(round(Fraction(total, denominator)))

    def _integer_form(self, metric: str) -> tuple[list[tuple[tuple[int, ...], int]], int]:
        """The polynomial in kept *counts* over one common denominator: cost = sum(n_m * prod(k_i)) / d.

        ``c_m * prod(k_i / size_i)`` is ``(c_m / prod(size_i)) * prod(k_i)``; with every coefficient
        over the common denominator ``d`` the sum is integer arithmetic, exactly the same rational.
        """
        if metric not in self._integer:
            per_count = []
            for m, c in self._poly(metric).items():
                c = Fraction(c)
                for i in m:
                    c /= self.groups[i].size
                per_count.append((m, c))
            denominator = 1
            for _, c in per_count:
                denominator = denominator * c.denominator // math.gcd(denominator, c.denominator)
            self._integer[metric] = ([(m, c.numerator * (denominator // c.denominator)) for m, c in per_count], denominator)
        return self._integer[metric]

    def macs(self, keep: Mapping[int, int] | None = None) -> int:
        return self.exact("macs", keep)

    def params(self, keep: Mapping[int, int] | None = None) -> int:
        return self.exact("params", keep)

    def evaluate(self, metric: str, ratios: np.ndarray) -> np.ndarray:
        """Fast float cost for keep ratios of shape (n_groups,) or (batch, n_groups)."""
        idx, coef = self._compiled[metric] if metric in self._compiled else self._compile(self._poly(metric))
        r = np.atleast_2d(np.asarray(ratios, dtype=np.float64))
        padded = np.concatenate([r, np.ones((r.shape[0], 1))], axis=1)
        vals = padded[:, idx].prod(axis=2) @ coef
        return vals if np.ndim(ratios) > 1 else vals[0]

    def torch(self, metric: str, ratios: torch.Tensor) -> torch.Tensor:
        """Differentiable cost of keep ratios (a tensor of shape (n_groups,))."""
        idx, coef = self._compiled[metric] if metric in self._compiled else self._compile(self._poly(metric))
        padded = torch.cat([ratios, ratios.new_ones(1)])
        index = torch.from_numpy(np.where(idx < 0, len(self.groups), idx)).to(ratios.device)
        return (padded[index].prod(dim=1) * torch.as_tensor(coef, dtype=ratios.dtype, device=ratios.device)).sum()

    def prunable_share(self, metric: str = "macs") -> float:
        """Share of the full cost that shrinks when the prunable groups shrink (1 - cost(0)/cost(1))."""
        poly = self._poly(metric)
        full = sum(poly.values())
        return float(1 - poly.get((), Fraction(0)) / full) if full else 0.0

    def ratios(self, keep: Mapping[int, int] | None = None) -> np.ndarray:
        keep = keep or {}
        return np.array([keep.get(g.id, g.size) / g.size for g in self.groups], dtype=np.float64)
