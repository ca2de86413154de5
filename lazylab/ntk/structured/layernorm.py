"""Layer rule for ``nn.LayerNorm`` (elementwise affine): ``y = xhat * w + b``.

``xhat`` = the input normalised over ``normalized_shape`` (``D`` numbers), computed from the
recorded input with ``F.layer_norm`` without affine. Per example and output ``o``, the gradients are
``J_w[n, o] = sum_t G[n, o, :, t] * xhat[n, :, t]`` and ``J_b[n, o] = sum_t G[n, o, :, t]`` (``t`` over
the leading positions): always formed explicitly (``2 D O`` numbers per example, build cost
``N O T D``, contraction ``N1 N2 O D``), which removes the LayerNorms of a transformer from the
Jacobian path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

KIND = "elementwise"


def supports(module: nn.Module) -> bool:
    return type(module) is nn.LayerNorm and module.elementwise_affine


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input ``(N, ..., *normalized_shape)`` -> ``xhat`` rows ``(N, D, T)``."""
    xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    d = module.weight.numel()
    return xhat.reshape(x.shape[0], -1, d).transpose(1, 2)


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, ..., *normalized_shape)`` -> ``(N, O, D, T)``."""
    d = module.weight.numel()
    return g.reshape(g.shape[0], g.shape[1], -1, d).transpose(2, 3)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    return gw.reshape(module.weight.shape)


def dims(a: Tensor) -> tuple[int, int]:
    return a.shape[2], 1


input_gram = None  # no Gram form: explicit features are already small


def per_example(module: nn.Module, a: Tensor, g: Tensor, weight: bool, bias: bool
                ) -> list[Tensor]:
    """``[(N, O, D), (N, O, D)]``: ``sum_t G * xhat`` and ``sum_t G``."""
    feats = []
    if weight:
        feats.append((g * a[:, None]).sum(3))
    if bias:
        feats.append(g.sum(3))
    return feats


def grad_of_sum(module: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    gs = g.sum(1)  # (N, D, T)
    return (gs * a).sum((0, 2)), gs.sum((0, 2))
