"""fit: hooks fire in order, checkpoints, determinism; a session driven from a hand-written loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphprune
from graphprune import data, models, passes
from graphprune.groups.plan import Plan


class Recorder:
    def __init__(self):
        self.events = []

    def before_step(self, step):
        self.events.append(("before", step))

    def after_step(self, step, loss):
        assert isinstance(loss, float)
        self.events.append(("after", step))

    def end_epoch(self, epoch):
        self.events.append(("epoch", epoch))


def small_loader(n=48, batch=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return list(zip(x.split(batch), y.split(batch)))


def test_hooks_fire_in_order_and_history_is_kept(tmp_path):
    rec = Recorder()
    loader = small_loader()
    history = graphprune.fit(models.get("digits_cnn"), loader, F.cross_entropy, 2, callbacks=[rec], val_data=loader,
                             checkpoint=tmp_path / "ckpt.pt", progress=False)
    expected = []
    for epoch in range(2):
        for step in range(epoch * 3, epoch * 3 + 3):
            expected += [("before", step), ("after", step)]
        expected.append(("epoch", epoch))
    assert rec.events == expected
    assert [h.epoch for h in history] == [0, 1] and 0 <= history[-1].metrics["val_accuracy"] <= 1
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert saved["epoch"] == 1 and len(saved["history"]) == 2


def test_same_seed_same_weights():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # model init outside fit's seed
        model = models.get("digits_cnn")
        graphprune.fit(model, small_loader(), F.cross_entropy, 1, seed=7, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_fit_learns_digits():
    train, val = data.digits(seed=0)
    model = models.get("digits_cnn")
    graphprune.fit(model, train, F.cross_entropy, 3, optimizer=torch.optim.Adam(model.parameters(), 3e-3), progress=False)
    assert graphprune.accuracy(model, val) > 0.9


class CountingPass(passes.MethodPass):
    """A training method for the test: counts its hooks, then keeps the first half of every group."""

    name = "counting_test_pass"
    trains = True

    def attach(self):
        self.calls = []

    def before_step(self, step):
        self.calls.append(("before", step))

    def after_step(self, step, loss=None):
        self.calls.append(("after", step))

    def end_epoch(self, epoch):
        self.calls.append(("epoch", epoch))

    def plan(self):
        return Plan({g.id: list(range(max(1, g.size // 2))) for g in self.gg.prunable_groups})


@pytest.fixture
def counting_pass():
    passes.register(CountingPass)
    yield
    passes.base._REGISTRY.pop(CountingPass.name)


def test_session_from_a_hand_written_loop(counting_pass):
    model = models.get("digits_cnn")
    x = torch.rand(2, 1, 8, 8)
    session = graphprune.prepare(model, "counting_test_pass", 0.5, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step, (xb, yb) in enumerate(small_loader()):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        session.before_step(step)
        opt.step()
        session.after_step(step, loss.item())
    session.end_epoch(0)
    assert session.method.calls == [("before", 0), ("after", 0), ("before", 1), ("after", 1), ("before", 2), ("after", 2), ("epoch", 0)]
    result = session.finish()
    assert result.model.get_submodule("stem.0").out_channels == 16
    assert np.isfinite(result.model(x).detach().numpy()).all()


def test_data_helpers_split_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.integers(0, 255, (40, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, 40, dtype=np.uint8))
    train, val = data.cifar10_subset(path, batch_size=8, val_fraction=0.25, seed=1)
    xb, yb = next(iter(train))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and len(val.dataset) == 10
    again = data.cifar10_subset(path, batch_size=8, val_fraction=0.25, seed=1)[1]
    assert torch.equal(next(iter(val))[0], next(iter(again))[0])
    with pytest.raises(graphprune.GraphPruneError, match="no CIFAR subset"):
        data.cifar10_subset(tmp_path / "missing.npz")
