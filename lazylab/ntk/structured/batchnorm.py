"""Layer rule for ``nn.BatchNorm1d/2d`` in eval mode (running statistics): ``y = xhat * w + b``.

``ntk`` evaluates every model in eval mode, so a BatchNorm layer is a per-channel affine map of
``xhat = (x - running_mean) / sqrt(running_var + eps)``: per example and output ``o``,
``J_w[n, o] = sum_t G[n, o, :, t] * xhat[n, :, t]`` and ``J_b[n, o] = sum_t G[n, o, :, t]`` (``t``
over spatial positions), formed explicitly like :mod:`.layernorm` (``2 C O`` numbers per example).
Layers without running statistics (batch-coupled) are refused earlier by ``ntk``; a layer in
training mode would fail the engine's check and use the Jacobian path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lazylab.ntk.structured.layernorm import dims, grad_of_sum, per_example

KIND = "elementwise"
__all__ = ["supports", "rows_in", "rows_out", "weight_shape", "dims", "input_gram",
           "per_example", "grad_of_sum"]

input_gram = None


def supports(module: nn.Module) -> bool:
    return (type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.affine
            and module.track_running_stats and module.running_mean is not None)


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input ``(N, C, *spatial)`` -> ``xhat`` rows ``(N, C, T)``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    xhat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(
        module.running_var.reshape(shape) + module.eps)
    return xhat.reshape(x.shape[0], x.shape[1], -1)


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, C, *spatial)`` -> ``(N, O, C, T)``."""
    return g.reshape(g.shape[0], g.shape[1], module.num_features, -1)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    return gw
