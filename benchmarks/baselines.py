"""The torch.func tutorial's empirical NTK, the baseline every NTK benchmark compares against.

``empirical_ntk_jacobian_contraction`` of the torch.func tutorial: per-example Jacobians
``vmap(jacrev(f_single))`` of ``x1`` and ``x2``, flattened per parameter and contracted with
``einsum``: ``"Naf,Maf->NM"`` (trace, ``(N1, N2)``) or ``"Naf,Mbf->NMab"`` (full, ``(N1, N2, O, O)``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap


def tutorial_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                 output: str = "trace") -> torch.Tensor:
    """The tutorial's Jacobian-contraction NTK of ``model`` (``output``: "trace" or "full")."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    jac1 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x1).values()]
    jac2 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x2).values()]
    eq = {"trace": "Naf,Maf->NM", "full": "Naf,Mbf->NMab"}[output]
    return torch.stack([torch.einsum(eq, a, b) for a, b in zip(jac1, jac2)]).sum(0)
