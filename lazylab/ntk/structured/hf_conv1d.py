"""Layer rule for Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections).

``transformers.pytorch_utils.Conv1D`` is a linear layer with the weight stored transposed:
``y = x W + b`` with ``W`` of shape ``(d_in, d_out)`` (``nx, nf``), applied at every sequence
position. So the rule is :mod:`.linear`'s with ``W^T``: ``J_W[n, o] = (sum_t G_t (x) A_t)^T``, and
the kernel block is the same ``sum_{t,t'} (G G'^T)_{tt'} (A A'^T + 1)_{tt'}`` (a Gram matrix does not
see the layout). Recognised by class name and module (``transformers``), so transformers is not
imported here.
"""

from __future__ import annotations

from torch import Tensor, nn

from lazylab.ntk.structured.linear import dims, grad_of_sum, input_gram, per_example

KIND = "matmul"
__all__ = ["supports", "rows_in", "rows_out", "weight_shape", "dims", "input_gram",
           "per_example", "grad_of_sum"]


def supports(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(module, "weight", None), nn.Parameter)
            and module.weight.dim() == 2)


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input ``(N, ..., d_in)`` -> ``(N, d_in, T)``."""
    return x.reshape(x.shape[0], -1, module.weight.shape[0]).transpose(1, 2)


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, ..., d_out)`` -> ``(N, O, d_out, T)``."""
    return g.reshape(g.shape[0], g.shape[1], -1, module.weight.shape[1]).transpose(2, 3)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    """``(d_out, d_in)`` gradient -> the stored ``(d_in, d_out)`` layout."""
    return gw.T
