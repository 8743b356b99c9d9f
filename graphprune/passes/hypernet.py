"""DHP's hypernetwork: one layer's weight from the latent vectors of its two channel dims.

For a weight of shape (n, c, *kernel) with k = prod(kernel) and embedding size m (Li et al., ECCV
2020, Eq. 1-3 in the compact form of Eq. 9-10):

    Z = z0 · z1ᵀ + B0                 latent layer,    (n, c)
    E = U3(Z) ∘ W1 + B1               embedding layer, (n, c, m)
    O = W2 * E + B2                   explicit layer,  (n, c, k), batched over (n, c)

``z0``/``z1`` are the latents of weight dims 0 and 1 (out/in for convs and linears, in/out for
transposed convs: the math is the same either way). Every element of Z has its own embedding and
explicit parameters, so slicing the output along dim 0 or 1 equals generating from the sliced
latents: the output is covariant with the latents (Eq. 11-13).

Memory: W2 alone holds m = 8 numbers per weight element, W1 and B1 another 2m per (n, c) entry,
about 11x the layer's own weight count for 3x3 kernels and 25x for 1x1 (ResNet-56: 0.86M weights,
9.3M hypernetwork parameters; MobileNetV2-CIFAR: 2.2M, 56M). That is fine for CIFAR-size and
SR/denoising models; it is the paper's design, not one for ImageNet-size models.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def fan_in(module: nn.Module) -> int:
    """How many inputs one output of ``module`` sums over: the fan the generated weight is scaled for.

    Conv and linear: in_channels/groups x kernel size (``weight.shape[1] * prod(kernel)``).
    Transposed conv: each output element receives in_channels/groups x prod(kernel/stride) taps.
    """
    w = module.weight
    kernel = math.prod(w.shape[2:])
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return max(1, round(w.shape[0] // module.groups * kernel / math.prod(module.stride)))
    return w.shape[1] * kernel


class HyperNetwork(nn.Module):
    """h(z0, z1; W, B) for one weight tensor of ``shape``, scaled for a layer of fan-in ``fan``.

    Initialization (Sec. 3.6): biases zero; W1 Xavier-uniform; W2 hyperfan-in (Chang et al., ICLR
    2020). Each element's embedding is a 1 -> m linear map, so Xavier gives W1 ~ U(±sqrt(6 / (1 + m))),
    Var(W1) = 2 / (1 + m). With zero biases and latents ~ N(0, 1), Var(Z) = E[z0²] E[z1²] = 1 and,
    W1, W2 zero-mean and independent, Var(E) = Var(W1) Var(Z) and Var(O) = m Var(W2) Var(E). Hyperfan-in
    asks the generated weight for the variance-preserving Var(O) = 1 / fan_in, so

        Var(W2) = 1 / (m · Var(W1) · fan_in) = (1 + m) / (2 m · fan_in),  W2 ~ U(±sqrt(3 Var(W2))).
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size, fan: int, embedding: int = 8, generator: torch.Generator | None = None):
        super().__init__()
        self.shape = tuple(shape)
        n, c, k, m = shape[0], shape[1], math.prod(shape[2:]), embedding
        w1_var = 2.0 / (1 + m)
        w2_var = 1.0 / (m * w1_var * fan)
        self.bias0 = nn.Parameter(torch.zeros(n, c))
        self.weight1 = nn.Parameter(_uniform((n, c, m), 3 * w1_var, generator))
        self.bias1 = nn.Parameter(torch.zeros(n, c, m))
        self.weight2 = nn.Parameter(_uniform((n, c, k, m), 3 * w2_var, generator))
        self.bias2 = nn.Parameter(torch.zeros(n, c, k))

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        latent = torch.outer(z0, z1) + self.bias0  # Eq. 1
        embedded = latent.unsqueeze(-1) * self.weight1 + self.bias1  # Eq. 9
        out = torch.matmul(self.weight2, embedded.unsqueeze(-1)).squeeze(-1) + self.bias2  # Eq. 10
        return out.reshape(self.shape)


def _uniform(shape: tuple[int, ...], bound_squared: float, generator: torch.Generator | None) -> torch.Tensor:
    bound = math.sqrt(bound_squared)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


__all__ = ["HyperNetwork", "fan_in"]
