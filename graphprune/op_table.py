"""The built-in ops, each described once, through ``graphprune.register_op`` like a user's: how
channels flow through it (rules.py), whether it runs a contraction and how a shape-only run
stands in for it (flops.py), its module fix-up and graph rewrite (slim.py), its plain-op form
(equivalents.py), which layers the methods model (NAP's K-FAC, DHP's hypernetworks). The fields
are those of :class:`ops.Op`. This module sits on top of the stages: its entries name their functions.

To teach graphprune an op: add its line here (or, for a user's own op, call ``graphprune.register_op``).
A family shares a line where its members share every field; an op whose field differs gets its
own line. Module classes are looked up exactly (a subclass may compute something else),
except for fix-ups, which apply to subclasses, and rules, which apply to a subclass that keeps
its base's ``forward``.
"""

from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .tracing import equivalents, modes
from .analysis import rules
from .slimming import slim
from .ops import NAMEDTUPLE, OWN_CODE, register_op

# ------------------------------------------------------------------ modules

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
register_op(CONVS, rule=rules.conv_module, cost="contraction", stand_in="contraction", formula="conv")
register_op(CONV_TRANSPOSES, rule=rules.conv_module, cost="contraction", stand_in="contraction", formula="conv_transpose")
register_op(nn.modules.conv._ConvNd, fixup=slim.fix_conv, generated=True)  # Lazy convs and subclasses too
register_op((nn.Conv1d, nn.Conv2d), kfac=True)
register_op("timm.layers.conv2d_same.Conv2dSame", rule=rules.conv_module)  # its forward pads first: same channels
register_op(nn.Linear, rule=rules.linear_module, cost="contraction", stand_in="contraction", formula="linear",
            fixup=slim.fix_linear, kfac=True, generated=True)
register_op(nn.Embedding, rule=rules.embedding_module, fixup=slim.fix_embedding)

register_op((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), rule=rules.batchnorm_module, cost="free", stand_in="norm")
register_op((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), rule=rules.batchnorm_module, cost="free")
register_op(nn.SyncBatchNorm, rule=rules.batchnorm_module)
register_op(nn.modules.batchnorm._NormBase, fixup=slim.fix_batchnorm)  # batch and instance norms
register_op(nn.GroupNorm, rule=rules.groupnorm_module, cost="free", stand_in="norm", fixup=slim.fix_groupnorm)
register_op(nn.LayerNorm, rule=rules.layernorm_module, cost="free", stand_in="norm", fixup=slim.fix_layernorm)
register_op(nn.PReLU, rule=rules.prelu_module, cost="free", fixup=slim.fix_prelu)

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Threshold, nn.Identity, nn.Dropout,
)
register_op(ACTIVATIONS, rule=rules.elementwise, cost="free", stand_in="alias")
register_op((nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout),
            rule=rules.elementwise, cost="free")

register_op((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
            rule=rules.pool, cost="free", stand_in="pool")
for dims, pools in ((1, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)), (2, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)),
                    (3, (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d))):
    register_op(pools, rule=rules.pool, cost="free", stand_in="pool", formula="adaptive_pool", spatial_dims=dims)
register_op((nn.LPPool1d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), rule=rules.pool)
register_op((nn.Softmax, nn.LogSoftmax), rule=rules.softmax, cost="free")
register_op(nn.Softmin, rule=rules.softmax)

register_op((
    nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d,
), rule=rules.movement, cost="free")

# library modules traced through a plain-op form (by qualified name, exact type)
register_op("torch.nn.modules.activation.MultiheadAttention", form=equivalents.multihead_attention)
register_op("torchvision.models.swin_transformer.ShiftedWindowAttention", form=equivalents.swin_window_attention)

# ------------------------------------------------------------------ functions

register_op((F.conv1d, F.conv2d, F.conv3d), rule=rules.conv_function, cost="contraction", stand_in="contraction",
            formula="conv", rewrite=slim.rewrite_conv_groups)
register_op((F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d), cost="contraction", stand_in="contraction")
register_op(F.linear, rule=rules.linear_function, cost="contraction", stand_in="contraction")
register_op(torch.addmm, rule=rules.addmm_function)
register_op((torch.matmul, operator.matmul, torch.bmm, torch.mm), rule=rules.matmul, cost="contraction",
            stand_in="contraction")
register_op(F.scaled_dot_product_attention, rule=rules.scaled_dot_product_attention,
            rewrite=slim.rewrite_attention_scale)
register_op(torch.einsum, rule=rules.einsum)

register_op((F.batch_norm, F.instance_norm), rule=rules.batchnorm_function, cost="free")
register_op(F.group_norm, rule=rules.groupnorm_function, cost="free", rewrite=slim.rewrite_group_norm)
register_op(F.layer_norm, rule=rules.layernorm_function, cost="free", rewrite=slim.rewrite_layer_norm)

# binary arithmetic: the result has the broadcast shape and torch.result_type
register_op((operator.add, operator.sub, torch.add, torch.sub), rule=rules.elementwise, cost="free", stand_in="binary")
register_op((operator.mul, operator.truediv, torch.mul, torch.div), rule=rules.elementwise, cost="free", stand_in="binary",
            arithmetic="rescale")
register_op((operator.pow, torch.pow, torch.square), rule=rules.elementwise, cost="free", arithmetic="power")
register_op((
    operator.neg, operator.iadd, operator.imul, operator.isub, operator.itruediv,
    torch.subtract, torch.multiply, torch.divide,
    torch.where, torch.maximum, torch.minimum, torch.clamp, torch.clip, torch.neg, torch.abs,
    torch.exp, torch.sqrt, torch.rsqrt, torch.relu, torch.sigmoid, torch.tanh,
    torch.erf, torch.reciprocal, torch.log, torch.sin, torch.cos,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.softsign, F.logsigmoid, F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
), rule=rules.elementwise, cost="free")

register_op((
    torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
    torch.movedim, torch.moveaxis, torch.squeeze, torch.unsqueeze, torch.cat, torch.concat,
    torch.concatenate, torch.stack, torch.unbind, torch.flip, torch.roll, torch.t,
    F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle,
    torch.channel_shuffle, F.channel_shuffle,
), rule=rules.movement, cost="free")
register_op(torch.repeat_interleave, rule=rules.movement)
register_op(torch.unflatten, rule=rules.movement, cost="free", takes="dim sizes")
register_op((torch.split, torch.tensor_split), rule=rules.movement, cost="free", rewrite=slim.rewrite_split,
            takes="split sizes")
register_op(torch.chunk, rule=rules.movement, cost="free", rewrite=slim.rewrite_split, takes="chunks")
register_op(torch.narrow, rule=rules.movement, cost="free", rewrite=slim.rewrite_narrow, takes="slice")
register_op(torch.reshape, rule=rules.movement, cost="free", rewrite=slim.rewrite_sizes, takes="shape")
register_op(operator.setitem, rule=rules.assigns_in_place)  # no cost: it writes, stand-ins must not reach it
register_op(NAMEDTUPLE, rule=rules.movement, cost="free")
register_op(operator.getitem, rule=rules.movement, cost="free", rewrite=slim.rewrite_getitem, takes="slice")
register_op(F.pad, rule=rules.movement, cost="free", rewrite=slim.rewrite_pad, on_labels=rules.pad_function)

register_op((
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.avg_pool1d,
), rule=rules.pool, cost="free")
register_op((F.interpolate, F.upsample, F.lp_pool2d, torch.max_pool2d), rule=rules.pool)
register_op((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax), rule=rules.softmax, cost="free")
register_op(F.softmin, rule=rules.softmax)
register_op((torch.sum, torch.amax, torch.amin), rule=rules.reduce, cost="free")
register_op((torch.std, torch.var), rule=rules.reduce)
register_op(torch.mean, rule=rules.mean, cost="free", rewrite=slim.rewrite_channel_mean)

register_op(builtins.getattr, rule=rules.shape_read, cost="free")
# Python arithmetic on sizes: no tensors, no rule needed
register_op((
    builtins.len, math.sqrt, math.prod, operator.floordiv, operator.mod,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
), cost="free")

# the graph nodes of equivalents.py's forms
register_op(equivalents.linear_rows, rule=rules.linear_rows, rewrite=slim.rewrite_linear_rows)
register_op(equivalents.batched, rule=rules.elementwise)
register_op((equivalents.merged_attention_mask, equivalents.shifted_window_mask), rule=rules.attention_mask)
register_op(modes.mode_select, rule=rules.mode_output)  # a constant, or the output, of each mode
register_op(modes.run_in_mode, rule=rules.mode_only)

# ------------------------------------------------------------------ other libraries' functions, by qualified name

# drops whole samples or elements with a mask broadcast over channels
register_op("torchvision.ops.stochastic_depth.stochastic_depth", rule=rules.elementwise, cost="free")
register_op("timm.layers.attention.maybe_add_mask", rule=rules.elementwise)  # scores + mask, or the scores
# builds an additive mask from its mask argument, reading only the scores' dtype and device
register_op("timm.layers.attention.resolve_self_attn_mask", rule=rules.builds_attention_mask, shape_only_arg=1)
# torch.fx.wrap'ed in torchvision: traced through a form, or through their own code
register_op("torchvision.models.swin_transformer._patch_merging_pad", form=equivalents.swin_patch_merging_pad)
register_op("torchvision.models.swin_transformer._get_relative_position_bias", form=OWN_CODE)
# pick feature maps from a dict by name; compute the pooling scales from their sizes
register_op(("torchvision.ops.poolers._filter_input", "torchvision.ops.poolers._setup_scales"), form=OWN_CODE)
# pool each channel of the feature maps (the first argument) over boxes
register_op(("torchvision.ops.poolers._multiscale_roi_align", "torchvision.ops.roi_align.roi_align",
                 "torchvision.ops.roi_pool.roi_pool"), rule=rules.roi_pool)

# ------------------------------------------------------------------ tensor methods

register_op((Tensor.add, Tensor.sub), rule=rules.elementwise, cost="free", stand_in="binary")
register_op((Tensor.mul, Tensor.div), rule=rules.elementwise, cost="free", stand_in="binary", arithmetic="rescale")
register_op((Tensor.pow, Tensor.square), rule=rules.elementwise, cost="free", arithmetic="power")
register_op((
    Tensor.add_, Tensor.sub_, Tensor.mul_, Tensor.div_, Tensor.neg, Tensor.abs, Tensor.exp, Tensor.sqrt, Tensor.rsqrt, Tensor.relu, Tensor.relu_,
    Tensor.sigmoid, Tensor.sigmoid_, Tensor.tanh, Tensor.clamp, Tensor.clamp_, Tensor.clip, Tensor.contiguous, Tensor.clone, Tensor.float, Tensor.double,
    Tensor.half, Tensor.bfloat16, Tensor.to, Tensor.detach, Tensor.reciprocal, Tensor.masked_fill, Tensor.where, Tensor.maximum,
    Tensor.minimum, Tensor.erf,
), rule=rules.elementwise, cost="free")
register_op(Tensor.type_as, rule=rules.elementwise, cost="free", shape_only_arg=1)
register_op((
    Tensor.flatten, Tensor.permute, Tensor.transpose, Tensor.t, Tensor.movedim, Tensor.squeeze, Tensor.unsqueeze, Tensor.repeat, Tensor.unbind,
    Tensor.flip, Tensor.roll, Tensor.swapaxes, Tensor.swapdims,
), rule=rules.movement, cost="free")
register_op(Tensor.unflatten, rule=rules.movement, cost="free", takes="dim sizes")
register_op((Tensor.expand_as, Tensor.view_as, Tensor.reshape_as), rule=rules.movement, cost="free", shape_only_arg=1)
register_op(Tensor.repeat_interleave, rule=rules.movement)
register_op((Tensor.split, Tensor.tensor_split), rule=rules.movement, cost="free", rewrite=slim.rewrite_split, takes="split sizes")
register_op(Tensor.chunk, rule=rules.movement, cost="free", rewrite=slim.rewrite_split, takes="chunks")
register_op(Tensor.narrow, rule=rules.movement, cost="free", rewrite=slim.rewrite_narrow, takes="slice")
register_op((Tensor.view, Tensor.reshape, Tensor.expand), rule=rules.movement, cost="free", rewrite=slim.rewrite_sizes, takes="shape")
register_op((Tensor.softmax, Tensor.log_softmax), rule=rules.softmax, cost="free")
register_op((Tensor.sum, Tensor.amax, Tensor.amin), rule=rules.reduce, cost="free")
register_op((Tensor.std, Tensor.var), rule=rules.reduce)
register_op(Tensor.mean, rule=rules.mean, cost="free", rewrite=slim.rewrite_channel_mean)
register_op((Tensor.matmul, Tensor.bmm, Tensor.mm), rule=rules.matmul, cost="contraction", stand_in="contraction")
register_op((Tensor.size, Tensor.dim, Tensor.numel), rule=rules.shape_read, cost="free")
