"""Small hand-built models, one per channel rule, used by the rule and oracle tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune.slimming.exactness import randomize_small_tensors


def conv(i, o, k=3, **kw):
    return nn.Conv2d(i, o, k, padding=k // 2, **kw)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv(3, 8)
        self.conv1, self.bn1 = conv(8, 6), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = conv(6, 8), nn.BatchNorm2d(8)
        self.head = conv(8, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.head(F.relu(x + y))


class DenseConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 4), conv(12, 5)

    def forward(self, x):
        a = F.relu(self.a(x))
        return self.c(torch.cat([a, F.relu(self.b(a))], dim=1))


class SplitCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8), conv(8, 5)

    def forward(self, x):
        p, q = self.a(x).split([3, 5], dim=1)
        return self.b(torch.cat([q, p], dim=1))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.dw, self.b = conv(3, 16, 1), conv(16, 16, groups=16), conv(16, 5, 1)

    def forward(self, x):
        return self.b(F.relu6(self.dw(F.relu6(self.a(x)))))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g, self.b = conv(3, 16, 1), conv(16, 8, groups=4), conv(8, 5, 1)

    def forward(self, x):
        return self.b(F.relu(self.g(F.relu(self.a(x)))))


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.up, self.b = conv(3, 16), nn.PixelShuffle(2), conv(4, 3)

    def forward(self, x):
        return self.b(F.relu(self.up(self.a(x))))


class ChannelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8, 1), conv(8, 5, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


class FlattenLinear(nn.Module):
    def __init__(self, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.a, self.fc = conv(3, 4, stride=2), nn.Linear(4 * 9, 10)

    def forward(self, x):  # x: 6x6 -> 3x3
        y = F.relu(self.a(x))
        if self.channels_last:
            y = y.permute(0, 2, 3, 1)
        return self.fc(y.flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc1, self.fc2, self.b = conv(3, 8), conv(8, 2, 1), conv(2, 8, 1), conv(8, 5)

    def forward(self, x):
        y = self.a(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.b(y * s)


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gn, self.b = conv(3, 8), nn.GroupNorm(4, 8), conv(8, 5)

    def forward(self, x):
        return self.b(F.relu(self.gn(self.a(x))))


class ChannelsLast(nn.Module):
    """A ConvNeXt block: depthwise conv, permute, LayerNorm, MLP, permute back, layer scale, residual."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = conv(3, 8), conv(8, 8, 7, groups=8)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))
        self.head = conv(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head(x + self.gamma * y)


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 6), conv(6, 5)

    def forward(self, x):
        y = torch.cumsum(self.a(x), dim=1)  # mixes channels: not in the rule table
        return self.c(F.relu(self.b(y)))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.shared, self.b = conv(3, 8), conv(8, 8), conv(8, 5)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(self.shared(y) + self.shared(F.relu(self.shared(y))))


class ShapeUse(nn.Module):
    """The channel count flows into arithmetic (frozen) and into a reshape (fine)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 6), conv(6, 5)

    def forward(self, x):
        y = self.a(x)
        y = y / y.size(1)
        z = self.b(y)
        z = z.view(z.size(0), z.size(1), -1).view_as(z)
        return self.c(z)


class AttentionReshape(nn.Module):
    """timm-style attention: qkv's head reshape is sized from the *residual stream's* channel count."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 32), nn.Linear(32, dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * 0.25).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class AttentionScaleFromShape(AttentionReshape):
    """As AttentionReshape, but the scale is computed from the stream's channel count: pruning the
    stream would change it, so the stream is frozen; qkv's head dims stay prunable."""

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        head_dim = C // self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * head_dim ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        return self.head(x.mean(1))


class AttentionSeparate(nn.Module):
    """Separate q/k/v linears, heads split with view(B, N, heads, -1), merged with reshape(B, N, -1)."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.q, self.k, self.v, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def split(self, t):
        B, N, _ = t.shape
        return t.view(B, N, self.heads, -1).transpose(1, 2)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / 8 ** 0.5, dim=-1)
        x = x + self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(B, N, -1))
        return self.head(x.mean(1))


class AttentionSDPA(AttentionReshape):
    """Packed qkv into F.scaled_dot_product_attention with its default scale (1/sqrt(q.size(-1)))."""

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(self.attend(q, k, v).transpose(1, 2).reshape(B, N, C))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class AttentionSDPABias(AttentionSDPA):
    """sdpa with a learned per-head attention bias (heads x tokens x tokens) as its additive mask. On
    CPU a mask that requires grad sends sdpa to its math kernel, the analysis' detached run to the
    fused one: both cost the same in ``graphprune.tracing.flops.flop_counter``."""

    def __init__(self, dim: int = 16, heads: int = 4, tokens: int = 16):
        super().__init__(dim, heads)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.unsqueeze(0))


class AttentionEinsum(nn.Module):
    """Attention spelled with einsum: q@kT, attn@v, and the output projection as a weight parameter."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Parameter(torch.randn(dim, dim) / 4)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (torch.einsum("bhnd,bhmd->bhnm", q, k) * 0.5).softmax(-1)
        y = torch.einsum("bhnm,bhmd->bhnd", attn, v).transpose(1, 2).reshape(B, N, C)
        x = x + torch.einsum("bnc,cd->bnd", y, self.proj)
        return self.head(x.mean(1))


class AttentionGQA(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads of 4 dims each, the key/value
    heads repeated for their query heads by ``repeat_interleave``, by Llama's ``repeat_kv``
    (``expand`` + ``reshape``, the kv head count read from the tensor) or by sdpa's ``enable_gqa``."""

    def __init__(self, share: str = "repeat_interleave", dim: int = 16, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.share, self.n_rep, self.head_dim = share, heads // kv_heads, dim // heads
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.q, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k, self.v = nn.Linear(dim, kv_heads * self.head_dim), nn.Linear(dim, kv_heads * self.head_dim)
        self.head = nn.Linear(dim, 5)

    def split(self, t):
        B, N, _ = t.shape
        return t.view(B, N, -1, self.head_dim).transpose(1, 2)

    def repeat(self, t):
        if self.share == "repeat_interleave":
            return t.repeat_interleave(self.n_rep, dim=1)
        B, kv_heads, N, d = t.shape
        return t[:, :, None].expand(B, kv_heads, self.n_rep, N, d).reshape(B, kv_heads * self.n_rep, N, d)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, _ = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.share == "enable_gqa":
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, self.repeat(k), self.repeat(v))
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, -1))
        return self.head(x.mean(1))


class ComputedShapes(nn.Module):
    """Channel counts read at run time size same-tensor reshapes (windows, head splits), split sizes and slices."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = conv(3, 8), conv(8, 8, 1), conv(4, 6, 1), conv(4, 6, 1)
        self.e, self.f, self.head = conv(8, 12, 1), conv(6, 6, 1), conv(12, 5, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        B, C, H, W = y.shape
        windows = y.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, 2, 2)
        windows = self.b(windows)
        _, C2, _, _ = windows.shape
        y = windows.view(B, H // 2, W // 2, C2, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C2, H, W)
        heads = y.view(B, 2, y.size(1) // 2, H * W).softmax(-1).view(B, -1, H, W)  # linked across the 2 heads
        p, q = heads.split([heads.size(1) // 2, heads.size(1) - heads.size(1) // 2], dim=1)
        z = self.e(torch.cat([self.c(p), self.d(q)], dim=1)[:, : 8])
        z2 = self.f(z[:, z.size(1) // 2 :])
        return self.head(z) + z2.sum(1, keepdim=True)


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8), conv(3, 6)

    def forward(self, x):
        return self.a(x).sum(1, keepdim=True) + self.b(x).mean(1, keepdim=True)


ALL = {
    "residual": (Residual, (2, 3, 8, 8)),
    "dense_concat": (DenseConcat, (2, 3, 8, 8)),
    "split_cat": (SplitCat, (2, 3, 8, 8)),
    "depthwise": (Depthwise, (2, 3, 8, 8)),
    "grouped": (Grouped, (2, 3, 8, 8)),
    "pixel_shuffle": (PixelShuffle, (2, 3, 8, 8)),
    "channel_shuffle": (ChannelShuffle, (2, 3, 8, 8)),
    "flatten_linear": (FlattenLinear, (2, 3, 6, 6)),
    "flatten_linear_cl": (lambda: FlattenLinear(channels_last=True), (2, 3, 6, 6)),
    "squeeze_excite": (SqueezeExcite, (2, 3, 8, 8)),
    "group_norm": (GroupNormNet, (2, 3, 8, 8)),
    "channels_last": (ChannelsLast, (2, 3, 8, 8)),
    "unknown_op": (UnknownOp, (2, 3, 8, 8)),
    "shared_conv": (SharedConv, (2, 3, 8, 8)),
    "shape_use": (ShapeUse, (2, 3, 8, 8)),
    "reductions": (Reductions, (2, 3, 8, 8)),
    "attention_reshape": (AttentionReshape, (2, 3, 8, 8)),
    "attention_scale_from_shape": (AttentionScaleFromShape, (2, 3, 8, 8)),
    "attention_separate": (AttentionSeparate, (2, 3, 8, 8)),
    "attention_sdpa": (AttentionSDPA, (2, 3, 8, 8)),
    "attention_einsum": (AttentionEinsum, (2, 3, 8, 8)),
    "attention_sdpa_bias": (AttentionSDPABias, (2, 3, 8, 8)),
    "attention_gqa_repeat_interleave": (AttentionGQA, (2, 3, 8, 8)),
    "attention_gqa_repeat_kv": (lambda: AttentionGQA("repeat_kv"), (2, 3, 8, 8)),
    "attention_gqa_enable_gqa": (lambda: AttentionGQA("enable_gqa"), (2, 3, 8, 8)),
    "computed_shapes": (ComputedShapes, (2, 3, 8, 8)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with random biases and norm scales (so a pruned channel's constant would show), and an input."""
    factory, shape = ALL[name]
    torch.manual_seed(0)
    model = factory().eval()
    randomize_small_tensors(model)
    return model, torch.randn(*shape)
