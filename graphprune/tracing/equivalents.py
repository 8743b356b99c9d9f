"""Plain-op forms of library code that would otherwise be an opaque leaf of the traced graph.

fx keeps ``torch.nn`` modules as leaves (``nn.MultiheadAttention`` among them, whose forward runs
a fused kernel or a long functional path that branches on input ranks and mask types), and
torchvision marks some functions with ``torch.fx.wrap`` (swin's window attention and patch
merging) because their code computes with input shapes. A leaf has no rule, so every channel it
touches is frozen. The tracer traces these through the forms below instead: each computes what
the library code computes, for the configurations it accepts, with ops the rule table knows
(linear, reshape into heads, permute, matmul/softmax or scaled_dot_product_attention with the
original scale, merge, output projection). A configuration a form does not accept raises
``NotImplementedError`` naming the option while tracing; the tracer then keeps that module a leaf
and the reason reaches the frozen groups.

The slim model keeps these forms (an ``nn.MultiheadAttention`` ties its inner width to
``embed_dim``, so a pruned one is no longer an ``nn.MultiheadAttention``): its parameters are
sliced like any other, under their original names. A few steps that hold no channels but depend
on run-time values (merging attention masks, swin's shift mask) are single graph nodes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function

from ..ops import OWN_CODE, function_op, module_op


# ------------------------------------------------------------------ graph nodes of the forms

def linear_rows(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_rows: tuple[int, int] | None,
    bias_rows: tuple[int, int] | None,
) -> torch.Tensor:
    """``F.linear`` with rows ``[start, stop)`` of a packed weight and bias (None: all rows).

    One graph node, so the rule table sees which part of the packed parameter it reads and the
    slim pass moves the bounds to the kept rows.
    """
    if has_torch_function((input, weight, bias)):
        return handle_torch_function(linear_rows, (input, weight, bias), input, weight, bias, weight_rows, bias_rows)
    if weight_rows is not None:
        weight = weight[weight_rows[0] : weight_rows[1]]
    if bias is not None and bias_rows is not None:
        bias = bias[bias_rows[0] : bias_rows[1]]
    return F.linear(input, weight, bias)


def merged_attention_mask(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, num_heads: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks as one additive mask for scores of shape (N, heads, L, S).

    Boolean masks become ``-inf`` where True, as ``F.multi_head_attention_forward`` makes them.
    """
    if has_torch_function((attn_mask, key_padding_mask)):
        return handle_torch_function(
            merged_attention_mask, (attn_mask, key_padding_mask), attn_mask, key_padding_mask, num_heads, dtype
        )
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:  # (N * heads, L, S)
            mask = mask.view(-1, num_heads, *mask.shape[1:])
        elif mask.dim() != 2:
            raise RuntimeError(f"attn_mask's dimension {mask.dim()} is not supported")
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype)[:, None, None, :]
        mask = padding if mask is None else mask + padding
    return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError("only bool and floating types of masks are supported")
    return mask


def batched(x: torch.Tensor, module: str) -> torch.Tensor:
    """``x``, checked to be a batched (3-D) input: the traced form of ``nn.MultiheadAttention``
    follows the batched path, which the example inputs took."""
    if has_torch_function((x,)):
        return handle_torch_function(batched, (x,), x, module)
    if x.dim() != 3:
        raise ValueError(
            f"'{module}' (nn.MultiheadAttention) was analyzed with batched 3-D inputs and its traced form takes "
            f"only those; got a {x.dim()}-D input. Add a batch dim, or analyze with leaf_modules=['{module}']."
        )
    return x


def window_shift(pad_h: int, pad_w: int, window_size: list[int], shift_size: list[int]) -> tuple[int, int]:
    """Swin's shift per dim: none along a dim that one window covers (as torchvision decides it)."""
    if has_torch_function((pad_h, pad_w)):
        return handle_torch_function(window_shift, (pad_h, pad_w), pad_h, pad_w, window_size, shift_size)
    return (0 if window_size[0] >= pad_h else shift_size[0], 0 if window_size[1] >= pad_w else shift_size[1])


def shifted_window_mask(
    pad_h: int, pad_w: int, window_size: list[int], shift: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Swin's attention mask for shifted windows, (windows, N, N): -100 between tokens that the
    cyclic shift brought into one window from different regions, 0 elsewhere (all 0 unshifted)."""
    if has_torch_function((pad_h, pad_w, shift)):
        return handle_torch_function(
            shifted_window_mask, (pad_h, pad_w, shift), pad_h, pad_w, window_size, shift, dtype, device
        )
    (wh, ww), (sh, sw) = window_size, shift
    region = torch.zeros((pad_h, pad_w), dtype=dtype, device=device)
    if sh or sw:
        count = 0
        for h in ((0, -wh), (-wh, -sh), (-sh, None)):
            for w in ((0, -ww), (-ww, -sw), (-sw, None)):
                region[h[0] : h[1], w[0] : w[1]] = count
                count += 1
    windows = (pad_h // wh) * (pad_w // ww)
    region = region.view(pad_h // wh, wh, pad_w // ww, ww).permute(0, 2, 1, 3).reshape(windows, wh * ww)
    mask = region.unsqueeze(1) - region.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


# ------------------------------------------------------------------ nn.MultiheadAttention

def multihead_attention(
    m: nn.MultiheadAttention,
    name: str,
    query: Any,
    key: Any,
    value: Any,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Any, Any]:
    """What ``nn.MultiheadAttention.forward`` computes on batched inputs (its non-fused path;
    the fused one computes the same), as linear -> heads -> attention -> merge -> out_proj."""
    unsupported = [option for option, on in (
        ("add_bias_kv=True", m.bias_k is not None), ("add_zero_attn=True", m.add_zero_attn),
    ) if on]
    for name, v in (("need_weights", need_weights), ("average_attn_weights", average_attn_weights), ("is_causal", is_causal)):
        if isinstance(v, fx.Proxy):
            unsupported.append(f"{name} computed in forward")
    if unsupported:
        raise NotImplementedError(
            f"graphprune traces nn.MultiheadAttention without {', '.join(unsupported)}; it stays an opaque leaf"
        )
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    heads, embed = m.num_heads, m.embed_dim
    head_dim = embed // heads
    self_attention, shared_kv = query is key and key is value, key is value
    query = _batch_first(batched(query, name), m.batch_first)  # (N, L, E)
    key = query if self_attention else _batch_first(batched(key, name), m.batch_first)
    value = key if shared_kv else _batch_first(batched(value, name), m.batch_first)
    q, k, v = _in_projection(m, query, key, value)
    q, k, v = (_split_heads(t, heads, head_dim) for t in (q, k, v))
    if is_causal and key_padding_mask is None and not need_weights:
        mask, causal = None, True
    else:
        mask, causal = merged_attention_mask(attn_mask, key_padding_mask, heads, query.dtype), False
    scale = math.sqrt(1.0 / float(head_dim))
    weights = None
    if need_weights or m.dropout > 0.0:
        scores = (q * scale) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = F.softmax(scores, dim=-1)
        attended = F.dropout(weights, p=m.dropout, training=m.training) if m.dropout > 0.0 else weights
        out = attended @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    out = out.transpose(1, 2)
    out = m.out_proj(out.reshape(out.shape[0], out.shape[1], embed))
    if not m.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _batch_first(x: Any, batch_first: bool) -> Any:
    return x if batch_first else x.transpose(0, 1)


def _in_projection(m: nn.MultiheadAttention, query: Any, key: Any, value: Any) -> tuple[Any, Any, Any]:
    """q, k, v as ``F.multi_head_attention_forward`` projects them (one linear for self-attention)."""
    e = m.embed_dim
    parts = ((0, e), (e, 2 * e), (2 * e, 3 * e))
    bias = m.in_proj_bias
    if not m._qkv_same_embed_dim:
        weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
        return tuple(linear_rows(x, w, bias, None, rows) for x, w, rows in zip((query, key, value), weights, parts))
    weight = m.in_proj_weight
    if query is key and key is value:
        return F.linear(query, weight, bias).chunk(3, dim=-1)
    q = linear_rows(query, weight, bias, parts[0], parts[0])
    if key is value:
        k, v = linear_rows(key, weight, bias, (e, 3 * e), (e, 3 * e)).chunk(2, dim=-1)
        return q, k, v
    return q, linear_rows(key, weight, bias, parts[1], parts[1]), linear_rows(value, weight, bias, parts[2], parts[2])


def _split_heads(x: Any, heads: int, head_dim: int) -> Any:
    """(N, L, heads * head_dim) -> (N, heads, L, head_dim)."""
    return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


# ------------------------------------------------------------------ torchvision swin

def swin_window_attention(m: nn.Module, name: str, x: Any) -> Any:
    """torchvision's ``ShiftedWindowAttention.forward`` (``shifted_window_attention`` without
    ``logit_scale``), with the shapes it computes left symbolic: any input size, as the original."""
    (wh, ww), heads = m.window_size, m.num_heads
    channels = m.qkv.in_features
    head_dim = channels // heads
    batch, h, w = x.shape[0], x.shape[1], x.shape[2]
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    pad_h, pad_w = x.shape[1], x.shape[2]
    shifted = sum(m.shift_size) > 0
    if shifted:
        shift = window_shift(pad_h, pad_w, m.window_size, m.shift_size)
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = (pad_h // wh) * (pad_w // ww)
    x = x.view(batch, pad_h // wh, wh, pad_w // ww, ww, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * windows, wh * ww, channels)
    qkv = m.qkv(x).reshape(batch * windows, wh * ww, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1))
    attn = attn + m.get_relative_position_bias()
    if shifted:
        mask = shifted_window_mask(pad_h, pad_w, m.window_size, shift, x.dtype, x.device)
        attn = attn.view(batch, windows, heads, wh * ww, wh * ww) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, wh * ww, wh * ww)
    attn = F.softmax(attn, dim=-1)
    if m.attention_dropout > 0.0:
        attn = F.dropout(attn, p=m.attention_dropout, training=m.training)
    x = attn.matmul(v).transpose(1, 2).reshape(batch * windows, wh * ww, channels)
    x = m.proj(x)
    if m.dropout > 0.0:
        x = F.dropout(x, p=m.dropout, training=m.training)
    x = x.view(batch, pad_h // wh, pad_w // ww, wh, ww, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
    if shifted:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def swin_patch_merging_pad(x: Any) -> Any:
    """torchvision's ``_patch_merging_pad`` with its sizes read one by one (fx cannot unpack a shape)."""
    h, w = x.shape[-3], x.shape[-2]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    return torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)


def module_form(m: nn.Module) -> Callable[..., Any] | None:
    """The plain-op form to trace instead of ``m``'s forward (exact type: a subclass may compute
    something else), or None. Forms are called as form(module, its qualified name in the model,
    *forward's args, **forward's kwargs); which module has which: op_table.py."""
    entry = module_op(type(m))
    return entry.form if entry is not None else None


def function_form(fn: Any) -> Callable[..., Any] | None:
    """What to trace instead of keeping the torch.fx.wrap'ed library function ``fn`` a leaf (its
    form, or ``fn`` itself where its own code traces as it is), or None."""
    entry = function_op(fn)
    if entry is None or entry.form is None:
        return None
    return fn if entry.form == OWN_CODE else entry.form
