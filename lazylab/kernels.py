"""Analytic infinite-width kernels (NNGP and NTK), same call shape as :func:`lazylab.ntk`.

Every function takes ``x1 (N1, d)``, ``x2 (N2, d)`` or None (``x2 = x1``) and returns
``(N1, N2)`` in the inputs' dtype (float64 recommended). Cost ``O(N1 N2 (d + depth))``.
Pairs of identical inputs get the ReLU angle exactly 0 (no ``arccos`` rounding on the diagonal).

Gaussian expectations used (``(u, u')`` centred Gaussian, ``E u^2 = q1``, ``E u'^2 = q2``,
``E u u' = c``, ``cos t = c / sqrt(q1 q2)``):

- relu (arc-cosine kernels): ``E s s' = sqrt(q1 q2) (sin t + (pi - t) cos t) / 2pi``,
  ``E ds ds' = (pi - t) / 2pi``;
- erf: ``E s s' = (2/pi) asin(2c / sqrt((1+2q1)(1+2q2)))``,
  ``E ds ds' = (4/pi) / sqrt((1+2q1)(1+2q2) - 4c^2)``;
- quadratic ``s(u) = u^2``: ``E s s' = q1 q2 + 2 c^2``, ``E ds ds' = 4 c``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ACTIVATIONS = ("relu", "erf", "quadratic")

__all__ = ["ACTIVATIONS", "gaussian_moments", "two_layer_ntk", "mlp_nngp", "mlp_ntk"]


def _inputs(x1: Tensor, x2: Tensor | None) -> tuple[Tensor, Tensor]:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, d) with N >= 1, got {tuple(x.shape)}")
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be a finite floating-point tensor")
    x2 = x1 if x2 is None else x2
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x1 has d={x1.shape[1]} features but x2 has d={x2.shape[1]}")
    return x1, x2.to(x1.dtype)


def _same_points(x1: Tensor, x2: Tensor) -> Tensor:
    """``(N1, N2)`` mask of exactly equal rows (``torch.unique`` over rows: ``O(N d log N)``)."""
    if x2 is x1:
        return torch.eye(x1.shape[0], dtype=torch.bool, device=x1.device)
    _, ids = torch.unique(torch.cat([x1, x2]), dim=0, return_inverse=True)
    return ids[: x1.shape[0], None] == ids[None, x1.shape[0]:]


def gaussian_moments(q1: Tensor, q2: Tensor, c: Tensor, activation: str,
                     same: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(E s(u) s(u'), E s'(u) s'(u'))`` for the covariance ``[[q1, c], [c, q2]]`` (broadcast).

    ``same``: optional boolean mask (broadcast like ``c``) of pairs that are the same point
    (``u = u'``). There the ReLU angle is set to exactly 0: ``arccos`` of a cosine rounded just
    below 1 returns ``sqrt(2 * 1e-16) ~ 1e-8`` instead of 0, an error of that size on the diagonal.
    """
    if activation == "relu":
        norm = torch.sqrt(q1 * q2).clamp_min(torch.finfo(c.dtype).tiny)
        cos = (c / norm).clamp(-1.0, 1.0)
        if same is not None:
            cos = torch.where(same, torch.ones_like(cos), cos)
        t = torch.arccos(cos)
        e = norm * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi)
        de = (math.pi - t) / (2 * math.pi)
        return e, de
    if activation == "erf":
        a, b = 1 + 2 * q1, 1 + 2 * q2
        e = (2 / math.pi) * torch.arcsin((2 * c / torch.sqrt(a * b)).clamp(-1.0, 1.0))
        de = (4 / math.pi) / torch.sqrt(a * b - 4 * c * c)
        return e, de
    if activation == "quadratic":
        return q1 * q2 + 2 * c * c, 4 * c
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def two_layer_ntk(
    x1: Tensor,
    x2: Tensor | None = None,
    activation: str = "relu",
    *,
    input_scale: float | None = None,
    init_std: float = 1.0,
    bias: bool = False,
    parts: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Infinite-width NTK of :class:`lazylab.models.TwoLayerNet` in NTK scaling.

    Model: ``f(x) = m^{-1/2} sum_j a_j s(s_in <w_j, x> + b_j)``, ``w_j ~ N(0, std^2 I)``,
    ``a_j ~ N(0, std^2)`` (``s_in`` = ``input_scale``, default ``1/sqrt(d)``; hidden biases
    ``b_j ~ N(0, std^2)`` and an output bias when ``bias``). With ``u = s_in <w, x> + b`` (so
    ``q = std^2 (s_in^2 |x|^2 + bias)``, ``c = std^2 (s_in^2 x.x' + bias)``) the kernel is

        K = k_a + k_b,  k_a = std^2 (s_in^2 x.x' + bias) E s'(u) s'(u')   (first layer),
                        k_b = E s(u) s(u') + bias                         (second layer).

    For ReLU, ``input_scale=1``, ``std=1`` this is Chizat et al. (2019) App. A.2 eq. (8):
    ``k_a = x.x' (pi - phi) / 2pi``, ``k_b = |x||x'| (sin phi + (pi - phi) cos phi) / 2pi``.
    For another output scale ``s_out`` multiply by ``m s_out^2``.

    Returns ``(N1, N2)``, or ``(k_a, k_b)`` when ``parts``.
    """
    x1, x2 = _inputs(x1, x2)
    s_in = 1.0 / math.sqrt(x1.shape[1]) if input_scale is None else float(input_scale)
    v = float(init_std) ** 2
    b = 1.0 if bias else 0.0
    dot = x1 @ x2.T
    q1 = v * (s_in**2 * (x1 * x1).sum(1) + b)[:, None]
    q2 = v * (s_in**2 * (x2 * x2).sum(1) + b)[None, :]
    c = v * (s_in**2 * dot + b)
    e, de = gaussian_moments(q1, q2, c, activation, _same_points(x1, x2))
    k_a = c * de
    k_b = e + b
    return (k_a, k_b) if parts else k_a + k_b


def _mlp(x1: Tensor, x2: Tensor | None, depth: int, weight_var: float, bias: float,
         bias_init_var: float | None, activation: str) -> tuple[Tensor, Tensor]:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive int (number of linear layers), got {depth!r}")
    x1, x2 = _inputs(x1, x2)
    bv = bias if bias_init_var is None else bias_init_var
    d = x1.shape[1]
    sig = weight_var * (x1 @ x2.T) / d + bv
    q1 = weight_var * (x1 * x1).sum(1)[:, None] / d + bv
    q2 = weight_var * (x2 * x2).sum(1)[None, :] / d + bv
    theta = sig - bv + bias
    same = _same_points(x1, x2) if depth > 1 else None
    for _ in range(depth - 1):
        e, de = gaussian_moments(q1, q2, sig, activation, same)
        e1, _ = gaussian_moments(q1, q1, q1, activation)
        e2, _ = gaussian_moments(q2, q2, q2, activation)
        new_sig = weight_var * e + bv
        theta = weight_var * e + bias + weight_var * de * theta
        sig, q1, q2 = new_sig, weight_var * e1 + bv, weight_var * e2 + bv
    return sig, theta


def mlp_nngp(x1: Tensor, x2: Tensor | None = None, depth: int = 2, *, weight_var: float = 1.0,
             bias: float = 0.0, bias_init_var: float | None = None,
             activation: str = "relu") -> Tensor:
    """NNGP kernel ``Sigma^{(L)}`` of a deep net in NTK parametrization (output covariance at init).

    Layers ``h^{l+1} = sigma_w n_l^{-1/2} W^l s(h^l) + beta b^l`` with ``W, b`` standard Gaussian
    (``h^0 = x``, no activation on the input, ``depth`` = number of linear layers ``L``):

        Sigma^1 = sigma_w^2 x.x'/d + v_b,   Sigma^{l+1} = sigma_w^2 E s(u) s(u') + v_b,

    ``u ~ N(0, Sigma^l)``, ``sigma_w^2`` = ``weight_var``, ``v_b`` = ``bias_init_var`` (default
    ``bias`` = ``beta^2``, i.e. Jacot's parametrization; 0 for lazylab's MLP, biases start at 0).
    """
    return _mlp(x1, x2, depth, weight_var, bias, bias_init_var, activation)[0]


def mlp_ntk(x1: Tensor, x2: Tensor | None = None, depth: int = 2, *, weight_var: float = 1.0,
            bias: float = 0.0, bias_init_var: float | None = None,
            activation: str = "relu") -> Tensor:
    """Infinite-width NTK ``Theta^{(L)}`` (Jacot et al. 2018), same model as :func:`mlp_nngp`.

        Theta^1 = sigma_w^2 x.x'/d + beta^2,
        Theta^{l+1} = sigma_w^2 E s(u) s(u') + beta^2 + sigma_w^2 E s'(u) s'(u') Theta^l.

    ``beta^2`` = ``bias`` is what a bias's gradient contributes (its multiplier squared), separate
    from its init variance ``bias_init_var``. :class:`lazylab.models.MLP` with
    ``parametrization="ntk"``: ``weight_var=1``, ``bias=1`` (``bias=True``) or 0,
    ``bias_init_var=0``.
    """
    return _mlp(x1, x2, depth, weight_var, bias, bias_init_var, activation)[1]
