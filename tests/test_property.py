"""Property tests: random small DAGs of every supported op.

For any such model the analysis must count params and MACs exactly, and garbage in pruned
channels (chosen at random) must never reach the output.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from graphprune.tracing.flops import flop_counter

import graphprune
from graphprune.slimming.exactness import randomize_small_tensors
from helpers import EXACT, leak_check, random_keep, random_plan, slim_error

OPS = (
    "conv", "bn_relu", "add", "cat", "split", "depthwise", "grouped", "pixel_shuffle", "channel_shuffle", "se",
    "group_norm", "gate", "sigmoid", "token_mix", "attention", "layer_scale", "heads", "window",
)
TOKENS = 36  # 6x6 inputs


class RandomNet(nn.Module):
    """Interprets a program of (op, source indices, width) steps; every step appends one tensor."""

    def __init__(self, program: list[tuple[str, int, int, int]]):
        super().__init__()
        self.steps = []
        self.layers = nn.ModuleDict()
        channels = [4]
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        for i, (op, a, b, width) in enumerate(program):
            a, b = a % len(channels), b % len(channels)
            c = channels[a]
            if op == "add" and channels[b] != c:
                op = "conv"
            if op in ("grouped", "channel_shuffle", "group_norm") and c % 2:
                op = "bn_relu"
            if op == "split" and c < 2:
                op = "conv"
            if op == "heads" and c % 2:
                op = "sigmoid"
            name = f"s{i}"
            if op == "conv":
                self.layers[name] = nn.Conv2d(c, width, 3 if width % 2 else 1, padding=1 if width % 2 else 0)
                out = width
            elif op == "bn_relu":
                self.layers[name] = nn.BatchNorm2d(c)
                out = c
            elif op == "add":
                out = c
            elif op == "cat":
                out = c + channels[b]
            elif op == "split":
                cut = 1 + width % (c - 1)
                out = cut if b % 2 == 0 else c - cut
                width = cut
            elif op == "depthwise":
                self.layers[name] = nn.Conv2d(c, c, 3, padding=1, groups=c)
                out = c
            elif op == "grouped":
                self.layers[name] = nn.Conv2d(c, 2 * width, 3, padding=1, groups=2)
                out = 2 * width
            elif op == "pixel_shuffle":
                self.layers[name] = nn.Conv2d(c, 4 * width, 1)
                out = width
            elif op == "channel_shuffle":
                out = c
            elif op == "se":
                self.layers[name] = nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU(), nn.Conv2d(width, c, 1), nn.Sigmoid())
                out = c
            elif op == "group_norm":
                self.layers[name] = nn.GroupNorm(2, c)
                out = c
            elif op == "gate":  # conv to value and gate halves, sigmoid(0) = 0.5 in pruned channels
                self.layers[name] = nn.Conv2d(c, 2 * width, 1)
                out = width
            elif op == "token_mix":  # a linear over tokens: its bias reaches pruned channels
                self.layers[name] = nn.Linear(TOKENS, TOKENS)
                out = c
            elif op == "attention":
                self.layers[name] = nn.ModuleList([nn.Conv2d(c, width, 1), nn.Conv2d(c, width, 1), nn.Conv2d(c, c, 1)])
                out = c
            elif op == "layer_scale":
                self.layers[name] = nn.ParameterList([nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)])
                out = c
            elif op in ("sigmoid", "heads", "window"):
                out = c
            self.steps.append((op, name, a, b, width))
            channels.append(out)
        self.head = nn.Conv2d(channels[-1], 5, 1)

    def forward(self, x):
        ts = [self.stem(x)]
        for op, name, a, b, width in self.steps:
            x, y = ts[a], ts[b]
            if op in ("conv", "depthwise", "grouped"):
                out = self.layers[name](x)
            elif op == "bn_relu":
                out = F.relu(self.layers[name](x))
            elif op == "add":
                out = x + y
            elif op == "cat":
                out = torch.cat([x, y], dim=1)
            elif op == "split":
                parts = torch.split(x, [width, x.shape[1] - width], dim=1)
                out = parts[b % 2]
            elif op == "pixel_shuffle":
                out = F.avg_pool2d(F.pixel_shuffle(self.layers[name](x), 2), 2)
            elif op == "channel_shuffle":
                n, c, h, w = x.shape
                out = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            elif op == "se":
                out = x * self.layers[name](x.mean((2, 3), keepdim=True))
            elif op == "group_norm":
                out = self.layers[name](x)
            elif op == "gate":
                v, g = torch.sigmoid(self.layers[name](x)).chunk(2, dim=1)
                out = v * g
            elif op == "sigmoid":
                out = torch.sigmoid(x)
            elif op == "token_mix":
                n, c, h, w = x.shape
                out = self.layers[name](x.flatten(2)).view(n, c, h, w)
            elif op == "attention":
                q, k, v = (layer(x).flatten(2) for layer in self.layers[name])
                attn = (q.transpose(1, 2) @ k).softmax(-1)
                out = (v @ attn.transpose(1, 2)).view_as(x)
            elif op == "layer_scale":
                out = x * self.layers[name][0]
            elif op == "heads":  # the channel count read at run time splits the channels into two heads
                n, c, h, w = x.shape
                out = x.view(n, 2, c // 2, h * w).softmax(-1).view(n, c, h, w)
            elif op == "window":  # window partition and reverse sized from the tensor's own shape
                n, c, h, w = x.shape
                win = x.view(n, c, h // 3, 3, w // 3, 3).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, 3, 3)
                win = torch.sigmoid(win)
                out = win.view(n, h // 3, w // 3, c, 3, 3).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
            ts.append(out)
        return self.head(ts[-1]).mean((2, 3))


programs = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 20), st.integers(0, 20), st.integers(1, 6)),
    min_size=1,
    max_size=8,
)


def analyzed(program, seed):
    torch.manual_seed(seed)
    model = RandomNet(program).eval()
    randomize_small_tensors(model, seed)
    x = torch.randn(2, 3, 6, 6)
    return model, x, graphprune.analyze(model, x)


def costs(model, x):
    with flop_counter() as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, seed=st.integers(0, 2**16))
def test_random_dags_count_exactly_and_never_leak(program, seed):
    model, x, gg = analyzed(program, seed)
    assert (gg.cost.macs(), gg.cost.params()) == costs(model, x)
    keep = random_keep(gg, np.random.default_rng(seed))
    assert leak_check(model, gg, keep, (x,), seed) == 0.0
    for g in gg.prunable_groups:
        for m in g.members:
            assert sorted(m.indices(range(g.size))) == sorted(m.positions.tolist())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, seed=st.integers(0, 2**16))
def test_random_dags_slim_exactly(program, seed):
    model, x, gg = analyzed(program, seed)
    plan = random_plan(gg, np.random.default_rng(seed))
    slim = graphprune.slim(gg, plan)
    assert costs(slim, x) == (gg.cost.macs(plan.counts()), gg.cost.params(plan.counts()))
    assert slim_error(model, gg, plan, (x,)) <= EXACT
