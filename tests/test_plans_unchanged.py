"""Issue #25: a refactor of the internals (rules, flops, slim, budget) gives the same plans as before.

Every case of tests/plan_cases.py is fingerprinted with the current code and compared with
tests/data/plans_before.json, which ``python tests/plan_cases.py --write`` saved from the code before
the refactor. The whole set takes about 30 s on two cores (one thread, slim graphs, no class
rebuilds), so it runs by default rather than in the slow suite.
"""

from __future__ import annotations

import json

import pytest

from plan_cases import CASES, SNAPSHOT, Case, differences, fingerprint

BEFORE: dict = json.loads(SNAPSHOT.read_text())


def test_snapshot_holds_exactly_the_cases():
    """A case added or dropped since the snapshot would otherwise go unchecked or fail for no reason."""
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES) >= 200
    assert set(BEFORE["cases"]) == ids, (sorted(ids - set(BEFORE["cases"])), sorted(set(BEFORE["cases"]) - ids))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_plan_is_unchanged(case: Case):
    expected = BEFORE["cases"][case.id]
    got = fingerprint(case)
    assert got == expected, f"{case.id} differs from the snapshot of {BEFORE['commit'][:10]}: {differences(expected, got)}"
