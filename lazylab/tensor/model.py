"""The over-parameterized symmetric tensor model ``T(u, c) = sum_i c_i u_i^{(x)l}`` (nn.Module).

Two parametrizations of the same set of tensors (parameters are always ``u`` (m, d) and ``c`` (m,)):

- ``"standard"``:    component i is ``c_i u_i^{(x)l}``  ((l+1)-homogeneous in (u_i, c_i));
- ``"homogeneous"``: component i is ``c_i ||u_i|| (u_i / ||u_i||)^{(x)l}``  (2-homogeneous in
  (u_i, c_i): scaling both by t scales the component by t^2). This is *our* reading of the
  "2-homogeneous reparameterization" of Wang et al. (2020); the paper's exact form was not found.

``forward(x)`` is a function of the parameters, so ``lazylab.linearize`` / ``lazylab.lazy`` apply:
x of shape (n, d) gives the polynomial ``T(x, ..., x) = sum_i c_i <u_i, x>^l``; x of shape
(n, l, d) gives the multilinear form ``T(x_1, ..., x_l) = sum_i c_i prod_k <u_i, x_k>`` (with
one-hot x_k these are the tensor entries, see ``coordinate_probes``). The Frobenius loss against a
target is computed from inner products only (``loss``), cost O(m^2 d + m r d).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lazylab.tensor.symmetric import SymCP, _check_order

__all__ = ["TensorModel", "coordinate_probes", "PARAMETRIZATIONS"]

PARAMETRIZATIONS = ("standard", "homogeneous")
_EPS_NORM = 1e-30


class TensorModel(nn.Module):
    """``T = sum_i c_i u_i^{(x)l}`` with m components in R^d (see module docstring).

    Init (our choice): ``u_i ~ N(0, init_scale^2 I_d / d)`` (so ``||u_i|| ~ init_scale``) and
    ``c_i = s_i * coef_scale`` with Rademacher signs s_i; ``coef_scale`` defaults to ``init_scale``
    for ``"standard"`` and to ``||u_i||`` (balanced) for ``"homogeneous"``.
    """

    def __init__(self, d: int, m: int, order: int = 3, parametrization: str = "standard",
                 init_scale: float = 1.0, coef_scale: float | None = None, *,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        _check_order(order)
        for name, v in (("d", d), ("m", m)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, "
                             f"got {parametrization!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        self.d, self.m, self.order = d, m, order
        self.parametrization = parametrization
        self.init_scale = float(init_scale)
        self.coef_scale = None if coef_scale is None else float(coef_scale)
        self.u = nn.Parameter(torch.empty(m, d, dtype=dtype, device=device))
        self.c = nn.Parameter(torch.empty(m, dtype=dtype, device=device))
        self.reinit_(torch.arange(m), generator=generator)

    @torch.no_grad()
    def reinit_(self, index: torch.Tensor | int, scale: float | None = None,
                generator: torch.Generator | None = None) -> None:
        """Re-draw components ``index`` from the init distribution (optionally at another scale)."""
        idx = torch.as_tensor(index, device=self.u.device).reshape(-1)
        s = self.init_scale if scale is None else float(scale)
        k = idx.numel()
        u = torch.randn(k, self.d, generator=generator, dtype=torch.float64) * (s / self.d ** 0.5)
        sign = torch.randint(0, 2, (k,), generator=generator).to(torch.float64) * 2 - 1
        if self.coef_scale is not None:
            c = sign * self.coef_scale * (s / self.init_scale)
        elif self.parametrization == "homogeneous":
            c = sign * u.norm(dim=1)
        else:
            c = sign * s
        self.u[idx] = u.to(self.u)
        self.c[idx] = c.to(self.c)

    def cp(self) -> SymCP:
        """The model tensor in standard CP form (differentiable in the parameters)."""
        if self.parametrization == "standard":
            return SymCP(self.c, self.u, self.order)
        norms = self.u.norm(dim=1).clamp_min(_EPS_NORM)
        return SymCP(self.c * norms, self.u / norms[:, None], self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Polynomial (x: (n, d)) or multilinear form (x: (n, l, d)) of the model tensor -> (n,)."""
        t = self.cp()
        if x.dim() == 2 and x.shape[1] == self.d:
            return t.evaluate(x)
        if x.dim() == 3 and x.shape[1:] == (self.order, self.d):
            prod = (x @ t.vectors.T).prod(dim=1)          # (n, m)
            return prod @ t.coefs
        raise ValueError(f"x must have shape (n, {self.d}) or (n, {self.order}, {self.d}), "
                         f"got {tuple(x.shape)}")

    def loss(self, target: SymCP, normalized: bool = True) -> torch.Tensor:
        """``||T(u, c) - T*||_F^2`` (divided by ``||T*||_F^2`` if normalized), from inner products:
        ``sum_ij c_i c_j <u_i,u_j>^l - 2 sum_ik c_i c*_k <u_i,u*_k>^l + ||T*||^2``.
        Cost O(m^2 d + m r d).
        """
        self._check_target(target)
        t = self.cp()
        tt = target.norm_sq()
        val = t.norm_sq() - 2 * t.inner(target) + tt
        return val / tt if normalized else val

    def regularizer(self) -> torch.Tensor:
        """``(1/2) sum_i (c_i^2 + ||u_i||^2)``; for the homogeneous parametrization its minimum over
        rescalings of a component equals ``sum_i |c_i| ||u_i||`` (an l1 penalty on the weights)."""
        return 0.5 * (self.c.pow(2).sum() + self.u.pow(2).sum())

    def component_weights(self) -> torch.Tensor:
        """``|c_i| ||u_i||^l`` (standard) or ``|c_i| ||u_i||`` (homogeneous): each component's
        Frobenius norm. Shape (m,)."""
        t = self.cp()
        return t.coefs.abs() * t.vectors.norm(dim=1).pow(self.order)

    def _check_target(self, target: SymCP) -> None:
        if not isinstance(target, SymCP):
            raise TypeError(f"target must be a SymCP, got {type(target).__name__}")
        if target.order != self.order or target.d != self.d:
            raise ValueError(f"target must have order {self.order} and d={self.d}, "
                             f"got order {target.order} and d={target.d}")


def coordinate_probes(d: int, order: int, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """All d^l one-hot probe tuples, shape (d^l, l, d), row-major in the index (i_1, ..., i_l).

    ``model(coordinate_probes(d, l))`` is the flattened d^l array of the model tensor, so the mean
    squared error against ``target.dense().flatten()`` is ``||T - T*||_F^2 / d^l`` (small d only).
    """
    _check_order(order)
    eye = torch.eye(d, dtype=dtype, device=device)
    idx = torch.tensor(list(itertools.product(range(d), repeat=order)), device=device)
    return eye[idx]
