"""Layer rule for ``nn.Conv1d`` / ``nn.Conv2d`` via the unfolded (im2col) form.

With ``U = unfold(x)`` of shape ``(N, C_in k, P)`` (``k`` = kernel size product, ``P`` = output
positions) the convolution is ``y[:, :, p] = W U[:, :, p] + b`` with ``W`` reshaped to
``(C_out, C_in k)``. So it is a linear layer applied at ``T = P`` positions (the helpers of
:mod:`.linear` do the rest): per example and output ``o``, ``J_W = sum_p G[n, o, :, p] (x)
U[n, :, p]`` and the kernel is ``sum_{p,p'} (G G'^T)_{pp'} (U^T U')_{pp'}``. The structured engine
uses either that position Gram (cost ``N1 N2 P^2 (C_in k + O C_out)``) or, usually much cheaper
for convolutions, the explicit per-example gradients ``J_W`` (cost ``N P O C_out C_in k`` to build,
``N1 N2 O C_out C_in k`` to contract). Supported: ``groups == 1``, zero padding (integer, tuple
or ``"same"`` with odd kernels, ``"valid"``), any stride and dilation. Other convolutions fall
back to the Jacobian path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lazylab.ntk.structured.linear import dims, grad_of_sum, input_gram, per_example

KIND = "matmul"
__all__ = ["supports", "rows_in", "rows_out", "weight_shape", "dims", "input_gram",
           "per_example", "grad_of_sum"]


def _padding(module: nn.Module) -> tuple[int, ...] | None:
    pad = module.padding
    if pad == "valid":
        return (0,) * len(module.kernel_size)
    if pad == "same":
        out = []
        for k, d in zip(module.kernel_size, module.dilation):
            if (d * (k - 1)) % 2:
                return None
            out.append(d * (k - 1) // 2)
        return tuple(out)
    return tuple(pad)


def supports(module: nn.Module) -> bool:
    return (
        type(module) in (nn.Conv1d, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and _padding(module) is not None
    )


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input ``(N, C_in, *spatial)`` -> unfolded ``(N, C_in k, P)``."""
    pad = _padding(module)
    if isinstance(module, nn.Conv1d):
        x4 = x.unsqueeze(2)
        return F.unfold(x4, (1, module.kernel_size[0]), dilation=(1, module.dilation[0]),
                        padding=(0, pad[0]), stride=(1, module.stride[0]))
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=pad,
                    stride=module.stride)


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, C_out, *spatial)`` -> ``(N, O, C_out, P)`` (a view)."""
    return g.reshape(g.shape[0], g.shape[1], module.out_channels, -1)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    return gw.reshape(module.weight.shape)
