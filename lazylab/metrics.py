"""How far is a run from its linearization? Kernel, weight, output and activation metrics.

Kernel metrics take kernels ``K`` as tensors or arrays: ``(N, N)`` (``ntk(..., output="trace")``) or
``(N, N, O, O)`` (``output="full"``, read as the ``(N O, N O)`` matrix). They are computed in float64
on the kernel's device. ``<A, B>_F = sum_ij A_ij B_ij``, ``||A||_F = sqrt(<A, A>_F)``.

- :func:`kernel_distance` ``1 - <K1, K2>_F / (||K1||_F ||K2||_F)`` (Fort et al. 2020; Loo et al. 2022)
- :func:`relative_kernel_change` ``||K - K0||_F / ||K0||_F`` (Geiger et al. 2019)
- :func:`kernel_velocity` ``kernel_distance(K_prev, K_next) / dt``
- :func:`cka` centered kernel alignment (Cortes et al. 2012; Kornblith et al. 2019)
- :func:`kernel_target_alignment` ``y^T K y / (||K||_F ||y||^2)``
- :func:`spectrum_summary` top eigenvalues, effective rank, fraction of ``y`` in the top-k eigenspace

Model metrics: :func:`relative_weight_change`, :func:`linearization_error`, :func:`laziness_kappa`
(Chizat et al. 2019, eq. 1, by Lanczos iterations on Jacobian- and Hessian-vector products) and
:func:`activation_stability` (Chizat et al. 2019, App C.2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp

from lazylab import functional as fn
from lazylab.regimes import Lazy, Linearized, weights

__all__ = [
    "kernel_distance",
    "relative_kernel_change",
    "kernel_velocity",
    "cka",
    "kernel_target_alignment",
    "spectrum_summary",
    "relative_weight_change",
    "linearization_error",
    "laziness_kappa",
    "activation_stability",
    "RELU_TYPES",
]

RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


# ----------------------------------------------------------------------------------------- kernels
def _as64(K: Any, arg: str) -> Tensor:
    """``K`` as a float64 tensor on its own device (numpy arrays go to the CPU)."""
    if isinstance(K, np.ndarray):
        K = torch.from_numpy(K)
    if not isinstance(K, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor or numpy array, got {type(K).__name__}")
    if K.is_complex() or K.dtype == torch.bool:
        raise TypeError(f"{arg} must be real, got dtype {K.dtype}")
    K = K.detach().to(torch.float64)
    if K.numel() == 0:
        raise ValueError(f"{arg} is empty (shape {tuple(K.shape)})")
    if not bool(torch.isfinite(K).all()):
        raise ValueError(f"{arg} contains NaN or inf")
    return K


def _square(K: Tensor, arg: str) -> Tensor:
    """``(N, N)`` -> itself; ``(N, N, O, O)`` -> the ``(N O, N O)`` matrix ``[(n, a), (m, b)]``."""
    if K.dim() == 4 and K.shape[0] == K.shape[1] and K.shape[2] == K.shape[3]:
        n, o = K.shape[0], K.shape[2]
        return K.permute(0, 2, 1, 3).reshape(n * o, n * o)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{arg} must be a square kernel (N, N) or (N, N, O, O), got {tuple(K.shape)}")
    return K


def _pair(K1: Any, K2: Any, a1: str = "K1", a2: str = "K2") -> tuple[Tensor, Tensor]:
    A, B = _as64(K1, a1), _as64(K2, a2)
    if A.shape != B.shape:
        raise ValueError(f"{a1} and {a2} must have the same shape, got {tuple(A.shape)} and "
                         f"{tuple(B.shape)}")
    return A, B.to(A.device)


def _norm(A: Tensor, arg: str) -> float:
    n = float(torch.linalg.vector_norm(A))
    if n == 0.0:
        raise ValueError(f"{arg} is identically zero: the metric is undefined")
    return n


def kernel_distance(K1: Any, K2: Any) -> float:
    """Kernel distance ``S(K1, K2) = 1 - <K1, K2>_F / (||K1||_F ||K2||_F)`` (Fort et al. 2020).

    In ``[0, 2]``; 0 iff ``K2 = c K1`` with ``c > 0`` (scale-invariant: only the kernel's "shape"
    counts). Any equal shapes (the sums run over all entries). Cost O(#entries)."""
    A, B = _pair(K1, K2)
    cos = float((A * B).sum()) / (_norm(A, "K1") * _norm(B, "K2"))
    return min(2.0, max(0.0, 1.0 - cos))  # rounding can push cos a hair past +-1


def relative_kernel_change(K: Any, K0: Any) -> float:
    """Relative kernel change ``||K - K0||_F / ||K0||_F`` (Geiger et al. 2019). Not scale-invariant:
    ``K = c K0`` gives ``|c - 1|``. Cost O(#entries)."""
    A, B = _pair(K, K0, "K", "K0")
    return float(torch.linalg.vector_norm(A - B)) / _norm(B, "K0")


def kernel_velocity(K_prev: Any, K_next: Any, dt: float) -> float:
    """Kernel velocity ``kernel_distance(K_prev, K_next) / dt`` between two snapshots ``dt`` apart
    (steps, epochs or time, in the caller's unit; Fort et al. 2020)."""
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    return kernel_distance(K_prev, K_next) / float(dt)


def _center(K: Tensor) -> Tensor:
    """``H K H`` with ``H = I - 11^T / N`` (double centering), in O(N^2)."""
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


def cka(K1: Any, K2: Any) -> float:
    """Centered kernel alignment ``<K1c, K2c>_F / (||K1c||_F ||K2c||_F)`` with ``Kc = H K H``,
    ``H = I - 11^T/N`` (Cortes, Mohri & Rostamizadeh 2012; Kornblith et al. 2019 for Gram matrices).

    In ``[-1, 1]`` (``[0, 1]`` for PSD kernels); invariant to ``K -> c K`` (``c > 0``) and to adding a
    constant to every entry. Square kernels only. Cost O(N^2)."""
    A, B = _pair(K1, K2)
    A, B = _center(_square(A, "K1")), _center(_square(B, "K2"))
    return float((A * B).sum()) / (_norm(A, "centered K1") * _norm(B, "centered K2"))


def _targets(y: Any, K: Tensor, arg: str = "y") -> Tensor:
    """Targets as a float64 ``(N', C)`` matrix matching the square kernel ``K`` (``N' x N'``).

    ``y`` (N,) float -> one column; (N,) integer labels -> one-hot (C = max label + 1); (N, C) as is.
    For a full kernel read as ``(N O, N O)``, ``y`` of shape (N, O) (or integer labels) is
    flattened to one column of length ``N O``."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor or numpy array, got {type(y).__name__}")
    y = y.detach().to(K.device)
    n = K.shape[0]
    if y.dim() == 1 and not y.is_floating_point():
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"{arg}: integer labels must be >= 0 (one-hot encoded), got {int(y.min())}")
        y = F.one_hot(y.long()).to(torch.float64)
    y = y.to(torch.float64)
    if y.dim() == 1:
        y = y[:, None]
    if y.dim() != 2:
        raise ValueError(f"{arg} must have shape (N,) or (N, C), got {tuple(y.shape)}")
    if y.shape[0] != n:
        if y.shape[0] * y.shape[1] == n:  # full kernel (N O, N O) with targets (N, O)
            return y.reshape(n, 1)
        raise ValueError(f"{arg} has {y.shape[0]} rows but the kernel is {n} x {n}")
    return y


def kernel_target_alignment(K: Any, y: Any) -> float:
    """Kernel-target alignment ``y^T K y / (||K||_F ||y||^2)`` (Cristianini et al. 2002).

    ``y`` (N,) values, (N,) integer labels (one-hot encoded) or (N, C): then the numerator is
    ``tr(Y^T K Y) = sum_c y_c^T K y_c`` and ``||y||^2 = ||Y||_F^2``. Equals ``<K, Y Y^T>_F /
    (||K||_F ||Y||_F^2)``: 1 when ``K`` is proportional to ``Y Y^T`` (one target column). Scale-
    invariant in ``K`` and ``y``. Cost O(N^2 C)."""
    A = _square(_as64(K, "K"), "K")
    Y = _targets(y, A)
    yn2 = float((Y * Y).sum())
    if yn2 == 0.0:
        raise ValueError("y is identically zero: the alignment is undefined")
    return float((Y * (A @ Y)).sum()) / (_norm(A, "K") * yn2)


def spectrum_summary(K: Any, y: Any = None, k: int = 10) -> dict[str, Any]:
    """Eigen-summary of a symmetric PSD kernel (``eigh`` in float64, O(N^3)).

    Returns a dict with:

    - ``eigenvalues``: all eigenvalues, descending (numpy float64 array);
    - ``top``: the ``k`` largest; ``trace`` = ``sum_i lambda_i``;
    - ``effective_rank``: ``exp(-sum_i p_i log p_i)`` with ``p_i = lambda_i / sum_j lambda_j`` over the
      positive eigenvalues (Roy & Vetterli 2007); ``participation_ratio``:
      ``(sum_i lambda_i)^2 / sum_i lambda_i^2``;
    - ``condition_top_k``: ``lambda_1 / lambda_k``;
    - with ``y``: ``y_topk_fraction`` ``= ||U_k^T Y||_F^2 / ||Y||_F^2``, the fraction of the target's
      energy in the span of the top-``k`` eigenvectors ``U_k`` (targets as in
      :func:`kernel_target_alignment`).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    A = _square(_as64(K, "K"), "K")
    A = 0.5 * (A + A.T)
    evals, evecs = torch.linalg.eigh(A)
    evals, evecs = evals.flip(0), evecs.flip(1)
    k = min(k, A.shape[0])
    lam = evals.cpu().numpy()
    pos = lam[lam > 0]
    if pos.size == 0:
        raise ValueError("K has no positive eigenvalue: not a kernel matrix")
    p = pos / pos.sum()
    out: dict[str, Any] = {
        "eigenvalues": lam,
        "top": lam[:k].copy(),
        "trace": float(lam.sum()),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "participation_ratio": float(pos.sum() ** 2 / (pos**2).sum()),
        "condition_top_k": float(lam[0] / lam[k - 1]) if lam[k - 1] > 0 else math.inf,
        "k": k,
    }
    if y is not None:
        Y = _targets(y, A)
        yn2 = float((Y * Y).sum())
        if yn2 == 0.0:
            raise ValueError("y is identically zero: its top-k fraction is undefined")
        out["y_topk_fraction"] = float((evecs[:, :k].T @ Y).pow(2).sum()) / yn2
    return out


# ------------------------------------------------------------------------------------------ models
def _check_module(model: object, arg: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arg} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def relative_weight_change(
    model: nn.Module, w0: nn.Module | dict[str, Tensor], per_layer: bool = False
) -> float | dict[str, float]:
    """Relative weight change ``||w - w0|| / ||w0||`` (Frobenius norm over all trainable weights).

    ``w`` are the effective weights of ``model`` (:func:`lazylab.regimes.weights`: ``w0 + delta`` for a
    lazy model); ``w0`` is a dict ``name -> tensor`` with the same names, or a module (its effective
    weights are used, e.g. a ``copy.deepcopy`` taken at init). With ``per_layer`` returns
    ``{name: ||w_l - w0_l|| / ||w0_l||, ..., "total": ...}`` (a zero ``w0_l`` gives the absolute
    change). Cost O(#params)."""
    _check_module(model, "model")
    ref = weights(_check_module(w0, "w0")) if isinstance(w0, nn.Module) else w0
    if not isinstance(ref, dict):
        raise TypeError(f"w0 must be a dict name -> Tensor or an nn.Module, got {type(w0).__name__}")
    w = weights(model)
    missing = sorted(set(w) - set(ref))
    if missing:
        raise ValueError(f"w0 lacks the weights {missing}; it has {sorted(ref)}")
    num = den = 0.0
    out: dict[str, float] = {}
    with torch.no_grad():
        for n, t in w.items():
            r = ref[n].to(t.device, torch.float64)
            if r.shape != t.shape:
                raise ValueError(f"w0[{n!r}] has shape {tuple(r.shape)}, the model's {tuple(t.shape)}")
            d2 = float((t.to(torch.float64) - r).pow(2).sum())
            n2 = float(r.pow(2).sum())
            num, den = num + d2, den + n2
            if per_layer:
                out[n] = math.sqrt(d2 / n2) if n2 > 0 else math.sqrt(d2)
    total = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    if per_layer:
        out["total"] = total
        return out
    return total


def _device(model: nn.Module, x: Tensor) -> torch.device:
    """Device of ``model``'s first parameter (``x``'s own for a parameter-free module)."""
    p = next(model.parameters(), None)
    return x.device if p is None else p.device


def linearization_error(model: nn.Module, linear_model: nn.Module, x: Tensor,
                        relative: bool = False) -> float:
    """Linearization error ``||f_w(x) - f_lin(x)||`` (Frobenius over the N points and outputs) of a
    model against its linearized twin (e.g. :class:`lazylab.track.LinearizedTwin`'s ``twin``);
    ``relative=True`` divides by ``||f_lin(x)||``. No grad; ``x`` is moved to each model's device.
    Cost: two forwards."""
    _check_module(model, "model")
    _check_module(linear_model, "linear_model")
    x = fn.check_inputs(x, "x", finite=False)
    with torch.no_grad():
        f = fn.apply(model, fn.cast_inputs(x, _device(model, fn.leaves(x)[0])))
        g = fn.apply(linear_model, fn.cast_inputs(x, _device(linear_model, fn.leaves(x)[0])))
        g = g.to(f.device)
    if f.shape != g.shape:
        raise ValueError(f"model and linear_model give outputs of shapes {tuple(f.shape)} and "
                         f"{tuple(g.shape)} on x")
    f, g = f.to(torch.float64), g.to(torch.float64)
    err = float(torch.linalg.vector_norm(f - g))
    if relative:
        return err / float(torch.linalg.vector_norm(g))
    return err


def _lanczos_top(op: Callable[[Tensor], Tensor], v0: Tensor, k: int) -> tuple[float, Tensor]:
    """Largest-magnitude eigenpair ``(lambda, u)`` of a symmetric operator by ``k`` Lanczos steps with
    full reorthogonalization, started at ``v0`` (flat vectors). Ritz values converge to the extreme
    eigenvalues far faster than power iteration when the spectrum is clustered. Memory: k vectors."""
    V = [v0 / torch.linalg.vector_norm(v0)]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(k):
        w = op(V[j])
        a = float(torch.dot(w, V[j]))
        alphas.append(a)
        for v in V:  # full reorthogonalization (twice is enough)
            w = w - torch.dot(w, v) * v
        for v in V:
            w = w - torch.dot(w, v) * v
        b = float(torch.linalg.vector_norm(w))
        scale = max(abs(t) for t in alphas)
        if j == k - 1 or b <= 1e-10 * max(scale, 1e-300):
            break
        betas.append(b)
        V.append(w / b)
    T = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    theta, S = np.linalg.eigh(T)
    i = int(np.argmax(np.abs(theta)))
    s = torch.as_tensor(S[:, i], dtype=V[0].dtype, device=V[0].device)
    u = sum(si * v for si, v in zip(s, V))
    return float(theta[i]), u / torch.linalg.vector_norm(u)


def laziness_kappa(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    n_iter: int = 30,
    n_outer: int = 8,
    n_restarts: int = 2,
    tol: float = 1e-4,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    return_parts: bool = False,
) -> float | dict[str, float]:
    """Chizat et al.'s laziness coefficient (eq. 1) of the model ``h: w -> (f(w, x_n))_n`` at its
    current weights ``w0`` (the trainable parameters), for the square loss with target ``y* = y``:

        kappa = ||h(w0) - y*|| * ||D^2 h(w0)|| / ||Dh(w0)||^2.

    ``h(w0)`` is the vector of all outputs on ``x`` (length ``N O``), ``||.||`` the Euclidean norm
    (kappa is invariant to rescaling that norm, e.g. by ``1/sqrt(N)``). Lazy when ``kappa << 1``.
    Any model of :mod:`lazylab.functional` (token or tuple/dict inputs, ``"logits"`` outputs);
    forward-mode products fall back to the exact double-VJP identity where torch has none.

    Operator norms, without forming the Jacobian ``J`` (``N O x P``) or any Hessian:

    - ``||Dh|| = sigma_max(J)``: ``n_iter`` Lanczos steps on ``J^T J`` (:func:`_jacobian_norm2`).
    - ``||D^2 h|| = sup_{|u|=|v|=1} ||D^2 h(w0)[u, v]||``, the operator norm of the symmetric
      bilinear map, maximised by alternation (``n_outer`` rounds, ``n_restarts`` starts, relative
      tolerance ``tol``; :func:`_hessian_norm`): a **lower bound** that converges to a local
      maximum (the exact norm for one output).

    ``y``: same shape as the output, or integer labels (one-hot encoded) for (N, C) outputs.
    ``dtype``: run on a float64 (say) copy of the model. ``seed``: the random starts.
    ``return_parts``: also return ``residual`` ``= ||h(w0) - y*||``, ``dh_norm``, ``d2h_norm``.
    Cost: ``n_iter`` (1 + ``n_restarts n_outer``) Jacobian/Hessian-vector products (each a few
    forward+backward passes on ``x``); memory ``n_iter`` parameter-sized vectors.
    """
    x, n_x = _check_kappa_args(model, x, y, n_iter, n_outer, n_restarts)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    p0 = next(model.parameters())
    dev, dt = p0.device, (dtype or p0.dtype)
    x = fn.cast_inputs(x, dev, dt)
    was_training = model.training
    model.eval()
    hf = _FlatOutputs(model, x)
    try:
        with torch.no_grad():
            out0 = hf.h(hf.named)
        res_vec = out0 - _kappa_targets(y, out0, n_x, dev)
        residual = float(torch.linalg.vector_norm(res_vec.to(torch.float64)))
        gen = torch.Generator(device="cpu").manual_seed(int(seed))

        def randn(n: int) -> Tensor:
            return torch.randn(n, generator=gen, dtype=torch.float64).to(dev, out0.dtype)

        sigma2 = _jacobian_norm2(hf, randn, n_iter)
        d2h_norm = _hessian_norm(hf, res_vec, residual, randn, n_iter, n_outer, n_restarts, tol)
    finally:
        model.train(was_training)
    kappa = residual * d2h_norm / sigma2 if sigma2 > 0 else math.inf
    if return_parts:
        return {"kappa": kappa, "residual": residual, "dh_norm": math.sqrt(sigma2), "d2h_norm": d2h_norm}
    return kappa


def _check_kappa_args(model: Any, x: Any, y: Any, n_iter: Any, n_outer: Any, n_restarts: Any
                      ) -> tuple[fn.Inputs, int]:
    """Refuse bad arguments of :func:`laziness_kappa` (naming them); return ``x`` checked and its
    number of rows."""
    _check_module(model, "model")
    if not isinstance(x, (Tensor, tuple, list, dict)) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
    x = fn.check_inputs(x, "x")
    n_x = fn.batch_size(x)
    if n_x != y.shape[0]:
        raise ValueError(f"x has {n_x} rows but y has {y.shape[0]}")
    for name, v in (("n_iter", n_iter), ("n_outer", n_outer), ("n_restarts", n_restarts)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return x, n_x


class _FlatOutputs:
    """``h(params) = f(params, x).reshape(-1)`` (length ``N O``) of ``model`` as a function of its
    trainable parameters ``named`` (frozen parameters and buffers held fixed), and the conversions
    between a flat vector of length ``P`` and the parameter dict."""

    def __init__(self, model: nn.Module, x: fn.Inputs) -> None:
        self.model, self.x = model, x
        self.named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not self.named:
            raise ValueError("model has no trainable parameters: kappa is undefined")
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.frozen.update({n: b for n, b in model.named_buffers()})
        self.names = list(self.named)
        self.sizes = [self.named[n].numel() for n in self.names]

    def to_dict(self, v: Tensor) -> dict[str, Tensor]:
        return {n: t.view_as(self.named[n]) for n, t in zip(self.names, torch.split(v, self.sizes))}

    def to_flat(self, d: dict[str, Tensor]) -> Tensor:
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def h(self, params: dict[str, Tensor]) -> Tensor:
        return fn.call(self.model, {**self.frozen, **params}, self.x).reshape(-1)


def _kappa_targets(y: Tensor, out0: Tensor, n_x: int, dev: torch.device) -> Tensor:
    """``y*`` as a flat vector like ``out0`` (``N O``): integer labels one-hot encoded when the
    model has ``O > 1`` outputs; refuses a ``y`` of another size."""
    yv = y.to(dev)
    if not yv.is_floating_point():
        o = out0.numel() // n_x
        yv = F.one_hot(yv.long(), o) if o > 1 else yv
    yv = yv.to(out0.dtype).reshape(-1)
    if yv.numel() != out0.numel():
        raise ValueError(f"y has {yv.numel()} entries but the model gives {out0.numel()} outputs on x")
    return yv


def _jacobian_norm2(hf: _FlatOutputs, randn: Callable[[int], Tensor], n_iter: int) -> float:
    """``||Dh||^2 = sigma_max(J)^2``, the top eigenvalue of ``J^T J`` (clipped at 0): ``n_iter``
    Lanczos steps from a random start, each one ``jvp`` + one ``vjp`` (``J`` is never formed)."""
    with fn.math_attention():
        _, vjp_fn = vjp(hf.h, hf.named)

    def jtj(v: Tensor) -> Tensor:
        return hf.to_flat(vjp_fn(fn.jvp(hf.h, hf.named, hf.to_dict(v))[1])[0])

    sigma2, _ = _lanczos_top(jtj, randn(sum(hf.sizes)), n_iter)
    return max(sigma2, 0.0)


def _hessian_norm(hf: _FlatOutputs, res_vec: Tensor, residual: float,
                  randn: Callable[[int], Tensor], n_iter: int, n_outer: int, n_restarts: int,
                  tol: float) -> float:
    """A lower bound on ``||D^2 h|| = sup_{|u|=|v|=1} ||D^2 h(w0)[u, v]||``, by alternation.

    For a symmetric bilinear map this equals ``sup_{|u|=1, |c|=1} |c^T D^2 h[u, u]|`` (Banach), the
    largest spectral norm of the Hessians ``H_c`` of ``c^T h``. Each of ``n_outer`` rounds: for fixed
    ``c``, the top ``|eigenpair|`` ``(lambda, u)`` of ``H_c`` by ``n_iter`` Lanczos steps on
    Hessian-vector products (forward-over-reverse); then ``c <- D^2 h[u, u] / ||D^2 h[u, u]||`` (a
    jvp of a jvp), which can only increase ``|lambda|``; stop when the value changes by at most
    ``tol`` relatively. Starts: ``c`` along the residual ``res_vec = h(w0) - y*``, then
    ``n_restarts - 1`` random ones. Returns ``max ||D^2 h[u, u]||`` over the iterates, which
    converges to a local maximum (the exact norm for one output). Lanczos, unlike plain power
    iteration, converges fast on the clustered Hessian spectra of wide ReLU nets.
    """
    h, named, to_dict, to_flat = hf.h, hf.named, hf.to_dict, hf.to_flat
    p_total = sum(hf.sizes)

    def second(u: Tensor) -> Tensor:  # D^2 h[u, u]
        ud = to_dict(u)
        return fn.jvp(lambda p: fn.jvp(h, p, ud)[1], named, ud)[1]

    best = 0.0
    for r in range(n_restarts):
        c = res_vec.clone() if r == 0 and residual > 0 else randn(res_vec.numel())
        c = c / torch.linalg.vector_norm(c)
        u = randn(p_total)
        prev = 0.0
        for _ in range(n_outer):
            def hvp(v: Tensor, c: Tensor = c) -> Tensor:  # H_c v, forward-over-reverse
                def grad_c(p: dict[str, Tensor]) -> dict[str, Tensor]:
                    return vjp(h, p)[1](c)[0]

                return to_flat(fn.jvp(grad_c, named, to_dict(v))[1])

            _, u = _lanczos_top(hvp, u, n_iter)
            g = second(u)
            val = float(torch.linalg.vector_norm(g))
            best = max(best, val)
            if val == 0.0 or abs(val - prev) <= tol * val:
                break
            prev, c = val, g / val
    return best


def _gating_net(model: nn.Module) -> list[tuple[nn.Module, dict[str, Tensor] | None]]:
    """The plain network(s) whose ReLU gates define ``model``'s activations, with the weights to
    evaluate them at (None = the module's own)."""
    if isinstance(model, Lazy):
        eff = model.effective_weights()
        if model.center == "symmetric":
            return [(model.model, {k[2:]: v for k, v in eff.items() if k.startswith(p)})
                    for p in ("a.", "b.")]
        return [(model.model, eff)]
    if isinstance(model, Linearized):  # gates frozen at w0 by construction
        return [(model.model, model.params0)]
    return [(model, None)]


def _preact_signs(model: nn.Module, x: fn.Inputs) -> list[Tensor]:
    """Signs of the inputs of every ReLU-module call in the forward pass(es), in call order."""
    signs: list[Tensor] = []

    def hook(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
        signs.append(torch.sign(inp[0].detach()))

    for net, params in _gating_net(model):
        handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, RELU_TYPES)]
        try:
            args, kwargs = fn.call_args(x)
            with torch.no_grad():
                if params is None:
                    net(*args, **kwargs)
                else:
                    functional_call(net, params, args, kwargs, tie_weights=True, strict=False)
        finally:
            for hd in handles:
                hd.remove()
    return signs


def activation_stability(model0: nn.Module, model: nn.Module, x: Tensor, batch_size: int = 1024) -> float:
    """Stability of activations (Chizat et al. 2019, App C.2): for each ReLU layer ``l`` (width
    ``n_l``) and the N inputs ``x``, ``s_l = #{(i, j): sign z_ij(model) = sign z_ij(model0)} / (n_l N)``
    with ``z`` the pre-activations; returns the mean of ``s_l`` over the ReLU layers.

    ``model0`` is the network at init (e.g. a ``copy.deepcopy`` taken before training), ``model``
    the same architecture after training. ReLU layers are the calls of ``nn.ReLU`` / ``nn.ReLU6`` /
    ``nn.LeakyReLU`` modules in the forward pass (a module called twice counts as two layers;
    ``F.relu`` calls are invisible). A :class:`lazylab.regimes.Lazy` model is evaluated at its
    effective weights ``w0 + delta`` (both copies when symmetric); a
    :class:`lazylab.regimes.Linearized` model's gates are those of ``w0`` (stability 1 by
    construction). Both models run in eval mode in batches of ``batch_size``. Cost: two forwards.
    """
    _check_module(model0, "model0")
    _check_module(model, "model")
    if not isinstance(x, (Tensor, tuple, list, dict)) or (isinstance(x, Tensor) and (
            x.dim() == 0 or x.shape[0] == 0)):
        raise ValueError("x must be a non-empty tensor of inputs")
    x = fn.check_inputs(x, "x", finite=False)
    modes = (model0.training, model.training)
    model0.eval()
    model.eval()
    same: list[float] = []
    total: list[float] = []
    try:
        for i in range(0, fn.batch_size(x), batch_size):
            xb = fn.take(x, slice(i, i + batch_size))
            s0 = _preact_signs(model0, fn.cast_inputs(xb, next(model0.parameters()).device))
            s1 = _preact_signs(model, fn.cast_inputs(xb, next(model.parameters()).device))
            if not s0:
                raise ValueError(
                    f"model0 ({type(model0).__name__}) has no nn.ReLU/ReLU6/LeakyReLU module called in "
                    "its forward pass: activation stability is defined for ReLU networks")
            if len(s0) != len(s1) or any(a.shape != b.shape for a, b in zip(s0, s1)):
                raise ValueError("model0 and model have different ReLU layers (architectures differ)")
            if not same:
                same, total = [0.0] * len(s0), [0.0] * len(s0)
            for j, (a, b) in enumerate(zip(s0, s1)):
                same[j] += float((a == b.to(a.device)).sum())
                total[j] += a.numel()
    finally:
        model0.train(modes[0])
        model.train(modes[1])
    return float(np.mean([s / t for s, t in zip(same, total)]))
