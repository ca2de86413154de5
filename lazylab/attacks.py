"""Adversarial attacks on any classifier ``nn.Module``: FGSM, a single L2 gradient step, PGD (L-inf /
L2, random start), and Wang et al.'s walk along the input gradient until the prediction flips.

Every attack works on a plain network, on ``lazylab.linearize(model)`` (centered or not) and on a
:class:`~lazylab.kernel_predictor.KernelPredictor` (``x -> K(x, X_train) c``), because it only needs
``model(x)`` to be differentiable in ``x``.

Loss whose input gradient is followed (``loss="auto"``):

- scalar outputs ``(N,)`` or ``(N, 1)`` with labels ``y in {-1, +1}``: logistic
  ``sum_i log(1 + exp(-y_i f(x_i)))``;
- outputs ``(N, C)`` with integer labels: cross-entropy ``sum_i -log softmax(f(x_i))_{y_i}``.

Losses are summed over the batch, so the gradient for example ``i`` depends on example ``i`` only.

Threat model (``clip = (lo, hi)``, default ``(0, 1)``; ``None`` = unbounded inputs):
``x_adv`` lies in the box ``[lo, hi]`` and ``||x_adv - x|| <= eps`` in the attack's norm
(``"linf"``: max over all non-batch coordinates; ``"l2"``: Euclidean over them). The constraint is
enforced after rounding: the returned :attr:`AttackResult.delta_norm` is measured in float64 on the
returned tensors and is ``<= eps`` exactly (points that rounding pushed outside are moved back with
``nextafter`` / a shrink), so a test can assert it without tolerance.

Cost: FGSM and the L2 step = one forward + backward; PGD with ``steps`` = ``steps`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazylab import functional as fn

__all__ = [
    "NORMS",
    "AttackResult",
    "SignFlipResult",
    "attack_loss",
    "input_gradient",
    "fgsm",
    "l2_gradient_step",
    "pgd",
    "sign_flip_walk",
    "accuracy",
    "robust_accuracy",
    "perturbation_norm",
]

NORMS = ("linf", "l2")
Clip = tuple[float, float] | None


@dataclass
class AttackResult:
    """``x_adv`` (shape of ``x``) and ``delta_norm`` ``(N,)`` float64: ``||x_adv - x||`` in ``norm``."""

    x_adv: Tensor
    delta_norm: Tensor
    eps: float
    norm: str


# ----------------------------------------------------------------------------- argument checks
def _check_eps(eps: object, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {eps!r}")
    e = float(eps)
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return e


def _check_steps(steps: object, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def _check_norm(norm: object) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return str(norm)


def _check_x(x: object, clip: Clip) -> Tensor:
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(f"x must be one floating-point tensor: attacks perturb continuous inputs, "
                        f"got a {type(x).__name__} of inputs (attack a model of the continuous "
                        "input alone, e.g. an embedding-level wrapper)")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}: attacks perturb "
                        "continuous inputs; integer inputs (token ids) have no gradient step. "
                        "Attack the embeddings instead (a model taking inputs_embeds)")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if clip is not None:
        if not (isinstance(clip, (tuple, list)) and len(clip) == 2):
            raise TypeError(f"clip must be a pair (lo, hi) or None, got {clip!r}")
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            raise ValueError(f"clip must satisfy lo < hi, got {clip!r}")
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo or xmax > hi:
            raise ValueError(f"x must lie in the data range clip={clip!r}, but its values span "
                             f"[{xmin:g}, {xmax:g}]; rescale the data or pass clip=None")
    return x


def _check_y(y: object, n: int) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) (one label per example), got {tuple(y.shape)}")
    return y


# ----------------------------------------------------------------------------- losses, gradients
def _scalar_out(out: Tensor) -> Tensor | None:
    if out.dim() == 1:
        return out
    if out.dim() == 2 and out.shape[1] == 1:
        return out[:, 0]
    return None


def attack_loss(out: Tensor, y: Tensor) -> Tensor:
    """Summed attack loss: logistic ``sum log(1 + exp(-y f))`` for scalar outputs and labels +-1,
    cross-entropy ``sum -log softmax(f)_y`` for ``(N, C)`` outputs and integer labels."""
    s = _scalar_out(out)
    if s is not None:
        if y.is_floating_point() or y.dtype in (torch.int64, torch.int32):
            yy = y.to(s.dtype)
            if not bool(((yy == 1) | (yy == -1)).all()):
                raise ValueError("y: a model with one output needs labels in {-1, +1}")
            return F.softplus(-yy * s).sum()
        raise TypeError(f"y must hold labels -1/+1, got dtype {y.dtype}")
    if out.dim() != 2 or y.is_floating_point():
        raise ValueError(f"needs outputs (N,) with labels +-1 or (N, C) with integer labels; got "
                         f"outputs {tuple(out.shape)} and labels of dtype {y.dtype}")
    return F.cross_entropy(out, y, reduction="sum")


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``d attack_loss(model(x), y) / dx``, shape of ``x`` (per example: the loss is a sum).
    Parameter ``.grad`` fields are not touched. Cost: one forward + backward."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = attack_loss(fn.apply(model, xr), y)
        (g,) = torch.autograd.grad(loss, xr)
    return g


def perturbation_norm(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    """Per-example ``||x_adv - x||`` ``(N,)``, difference and norm in float64, over all non-batch
    coordinates."""
    d = (x_adv.detach().to(torch.float64) - x.detach().to(torch.float64)).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _per_example(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _unit_l2(g: Tensor) -> Tensor:
    n = g.flatten(1).norm(dim=1)
    return g / _per_example(torch.where(n > 0, n, torch.ones_like(n)), g)


def _project(x: Tensor, x_adv: Tensor, eps: float, norm: str, clip: Clip) -> Tensor:
    """Feasible point (float64 inside, x's dtype out): project ``x_adv - x`` onto the eps-ball, then
    clip to the box.
    For L-inf this is the exact Euclidean projection onto the intersection (the box and the ball are
    both coordinate-wise); for L2 it is the usual ball projection followed by clipping, which only
    shrinks each coordinate of the perturbation (x is in the box), so the ball still holds."""
    dt = x.dtype
    x, x_adv = x.detach().to(torch.float64), x_adv.detach().to(torch.float64)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1)
        scale = torch.where(n > eps, eps / n.clamp_min(1e-300), torch.ones_like(n))
        delta = delta * _per_example(scale, x)
    out = x + delta
    if clip is not None:
        out = out.clamp(clip[0], clip[1])
    return _enforce(x.to(dt), out.to(dt), eps, norm, clip)


def _enforce(x: Tensor, x_adv: Tensor, eps: float, norm: str, clip: Clip) -> Tensor:
    """Remove rounding violations of ``||x_adv - x|| <= eps`` (measured in float64)."""
    x_adv = x_adv.detach()
    x = x.detach()
    tiny = torch.finfo(x.dtype).eps
    for i in range(60):
        nrm = perturbation_norm(x_adv, x, norm)
        bad = nrm > eps
        if not bool(bad.any()):
            return x_adv
        if norm == "linf":
            over = (x_adv.to(torch.float64) - x.to(torch.float64)).abs() > eps
            x_adv = torch.where(over, torch.nextafter(x_adv, x), x_adv)
        else:  # shrink the violators by a factor that grows geometrically away from 1 (0 is feasible)
            f = (eps / nrm.clamp_min(1e-300)) * max(0.0, 1.0 - 4.0 * tiny * 2.0**i)
            shrink = torch.where(bad, f, torch.ones_like(f)).to(x.dtype)
            x_adv = x + (x_adv - x) * _per_example(shrink, x)
            if clip is not None:
                x_adv = x_adv.clamp(clip[0], clip[1])
    raise RuntimeError("could not enforce the perturbation bound (should not happen)")


def _result(x: Tensor, x_adv: Tensor, eps: float, norm: str) -> AttackResult:
    x_adv = x_adv.detach()
    return AttackResult(x_adv, perturbation_norm(x_adv, x, norm), eps, norm)


# ----------------------------------------------------------------------------- one-step attacks
def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, clip: Clip = (0.0, 1.0)) -> AttackResult:
    """Fast gradient sign method (L-inf): ``x_adv = clip(x + eps * sign(grad_x L(f(x), y)))``.

    For a linear model ``f(x) = <w, x> + b`` with the logistic loss this is
    ``x - eps * y * sign(w)`` (before clipping). Cost: one forward + backward.
    """
    eps = _check_eps(eps)
    x = _check_x(x, clip)
    y = _check_y(y, x.shape[0])
    g = input_gradient(model, x, y)
    return _result(x, _project(x, x + eps * g.sign(), eps, "linf", clip), eps, "linf")


def l2_gradient_step(model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                     clip: Clip = (0.0, 1.0)) -> AttackResult:
    """Single normalized gradient step (L2): ``x_adv = clip(x + eps * g / ||g||)``,
    ``g = grad_x L(f(x), y)`` per example (a zero gradient leaves the example unchanged).
    Cost: one forward + backward."""
    eps = _check_eps(eps)
    x = _check_x(x, clip)
    y = _check_y(y, x.shape[0])
    g = input_gradient(model, x, y)
    return _result(x, _project(x, x + eps * _unit_l2(g), eps, "l2", clip), eps, "l2")


# ----------------------------------------------------------------------------- PGD
def _random_start(x: Tensor, eps: float, norm: str, gen: torch.Generator) -> Tensor:
    shape = x.shape
    if norm == "linf":
        u = torch.rand(shape, generator=gen, device=gen.device, dtype=x.dtype)
        return (2 * u - 1).to(x.device) * eps
    z = torch.randn(shape, generator=gen, device=gen.device, dtype=x.dtype)
    d = z[0].numel()
    r = torch.rand(shape[0], generator=gen, device=gen.device, dtype=x.dtype) ** (1.0 / d)
    return (_unit_l2(z) * _per_example(r * eps, z)).to(x.device)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    clip: Clip = (0.0, 1.0),
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> AttackResult:
    """Projected gradient ascent on the attack loss (Madry et al. 2018).

    ``delta_0`` uniform in the eps-ball (``random_start``; L-inf: uniform cube, L2: uniform ball) or 0,
    then ``steps`` times: ``x_{k+1} = P(x_k + step_size * s(g_k))`` with ``s(g) = sign(g)`` (L-inf) or
    ``g / ||g||`` (L2), ``g_k = grad_x L(f(x_k), y)``, and ``P`` the projection onto
    ``{||x' - x|| <= eps} cap [lo, hi]^D``. Default ``step_size = 2.5 * eps / steps``.
    Returns the last iterate. Random numbers come from ``generator`` (default: a fresh generator on
    CPU seeded with ``seed``, so CPU and CUDA runs start from the same point).
    Cost: ``steps`` forward + backward passes.
    """
    eps = _check_eps(eps)
    steps = _check_steps(steps)
    norm = _check_norm(norm)
    x = _check_x(x, clip)
    y = _check_y(y, x.shape[0])
    alpha = 2.5 * eps / steps if step_size is None else _check_eps(step_size, "step_size")
    x = x.detach()
    if random_start and eps > 0:
        gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        x_adv = _project(x, x + _random_start(x, eps, norm, gen), eps, norm, clip)
    else:
        x_adv = x.clone()
    if eps == 0:
        return _result(x, x_adv, eps, norm)
    for _ in range(steps):
        g = input_gradient(model, x_adv, y)
        step = g.sign() if norm == "linf" else _unit_l2(g)
        x_adv = _project(x, x_adv + alpha * step, eps, norm, clip)
    return _result(x, x_adv, eps, norm)


# ----------------------------------------------------------------------------- evaluation
def _predict_labels(out: Tensor) -> Tensor:
    s = _scalar_out(out)
    if s is not None:
        return torch.where(s >= 0, 1, -1)
    return out.argmax(1)


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        pred = _predict_labels(fn.apply(model, x))
    return pred.to(y.device) == y.to(pred.dtype)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y`` (sign of a scalar output vs +-1, else argmax)."""
    y = _check_y(y, x.shape[0])
    hits = sum(int(_correct(model, x[i:i + batch_size], y[i:i + batch_size]).sum())
               for i in range(0, x.shape[0], batch_size))
    return hits / x.shape[0]


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, norm: str = "linf",
                    steps: int = 20, step_size: float | None = None, random_start: bool = True,
                    clip: Clip = (0.0, 1.0), batch_size: int = 512, seed: int = 0) -> float:
    """Accuracy on PGD examples (``pgd`` with these arguments, run in batches of ``batch_size``).
    A point counts as robust only if it is correctly classified at ``x`` *and* at ``x_adv``."""
    y = _check_y(y, x.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    hits = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        res = pgd(model, xb, yb, eps, steps=steps, step_size=step_size, norm=norm,
                  random_start=random_start, clip=clip, generator=gen)
        hits += int((_correct(model, xb, yb) & _correct(model, res.x_adv, yb)).sum())
    return hits / x.shape[0]


# ----------------------------------------------------------------------------- Wang et al. walk
@dataclass
class SignFlipResult:
    """Per example ``(N,)``: ``delta`` = L2 distance walked until the sign flipped (NaN if it did not
    flip within the budget or the point was skipped), ``grad_norm`` = ``||grad_x f(x)||``,
    ``eta = delta / grad_norm`` (the size of the equivalent single gradient step), ``flipped``,
    ``walked`` (False for points skipped because misclassified) and ``rel_delta = delta / ||x||``."""

    delta: Tensor
    grad_norm: Tensor
    eta: Tensor
    flipped: Tensor
    walked: Tensor
    rel_delta: Tensor


def sign_flip_walk(model: nn.Module, x: Tensor, y: Tensor | None = None, *, step: float = 1e-3,
                   max_steps: int = 5000, coarse: int = 64, batch_size: int = 256) -> SignFlipResult:
    """Wang, Ullah, Mianjy & Arora (2022), ``ntk_normal.py``: walk from ``x`` along the fixed
    direction ``-sign(f(x)) g``, ``g = grad_x f(x) / ||grad_x f(x)||``, in steps of ``step`` until
    ``sign f`` changes; ``delta = k * step`` for the first such ``k <= max_steps``.

    A binary classifier with scalar output is required. If ``y`` (+-1) is given, misclassified points
    are not walked (``walked = False``, ``delta = NaN``; the authors' code records 0 for them).
    For ``f(x) = <w, x> + b`` the result is ``|f(x)| / ||w||`` rounded up to the step grid.

    The walk is evaluated on a grid of ``coarse * step`` first, then step by step inside the first
    coarse interval whose end has flipped sign (identical to the fine walk unless ``f`` crosses
    zero twice within one coarse interval). Inputs are not clipped (as in the authors' code).
    Cost: about ``max_steps / coarse + coarse`` batched forwards per example.
    """
    x = _check_x(x, None)
    step = _check_eps(step, "step")
    if step == 0:
        raise ValueError("step must be > 0")
    max_steps = _check_steps(max_steps, "max_steps")
    coarse = _check_steps(coarse, "coarse")
    n = x.shape[0]
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn.apply(model, xr)
        f0 = _scalar_out(out)
        if f0 is None:
            raise ValueError(f"sign_flip_walk needs a scalar-output binary model, got outputs "
                             f"{tuple(out.shape)}")
        (g,) = torch.autograd.grad(f0.sum(), xr)
    f0 = f0.detach()
    walked = torch.ones(n, dtype=torch.bool, device=x.device)
    if y is not None:
        y = _check_y(y, n).to(x.device)
        walked = torch.where(f0 >= 0, 1, -1) == y.to(torch.int64)
    gnorm = g.flatten(1).norm(dim=1)
    direction = -_per_example(torch.sign(f0), x) * _unit_l2(g)
    s0 = torch.sign(f0)
    k_first = torch.full((n,), -1, dtype=torch.int64, device=x.device)

    def first_flip(idx: Tensor, ks: Tensor) -> Tensor:
        """For examples ``idx`` and step counts ``ks (K,)``: index into ks of the first flip, or -1."""
        res = torch.full((idx.numel(),), -1, dtype=torch.int64, device=x.device)
        per = max(1, batch_size // max(1, ks.numel()))
        for j in range(0, idx.numel(), per):
            ii = idx[j:j + per]
            pts = (x[ii].unsqueeze(1) + (ks.to(x.dtype) * step).reshape(1, -1, *([1] * (x.dim() - 1)))
                   * direction[ii].unsqueeze(1))
            with torch.no_grad():
                fv = _scalar_out(fn.apply(model, pts.reshape(-1, *x.shape[1:]))).reshape(
                    ii.numel(), -1)
            flip = torch.sign(fv) != s0[ii].unsqueeze(1)
            has = flip.any(1)
            first = flip.to(torch.int64).argmax(1)
            res[j:j + per] = torch.where(has, first, -1)
        return res

    todo = torch.nonzero(walked & (s0 != 0)).flatten()
    k_first[walked & (s0 == 0)] = 0
    if todo.numel():
        n_coarse = math.ceil(max_steps / coarse)
        grid = torch.arange(1, n_coarse + 1, device=x.device) * coarse
        grid = grid.clamp_max(max_steps)
        ci = first_flip(todo, grid)
        hit = ci >= 0
        todo, ci = todo[hit], ci[hit]
        for c in torch.unique(ci).tolist():
            idx = todo[ci == c]
            lo = 1 if c == 0 else int(grid[c - 1]) + 1
            ks = torch.arange(lo, int(grid[c]) + 1, device=x.device)
            fi = first_flip(idx, ks)
            k_first[idx] = torch.where(fi >= 0, ks[fi.clamp_min(0)], int(grid[c]))
    flipped = k_first >= 0
    delta = torch.where(flipped, k_first.to(torch.float64) * step, torch.full_like(gnorm, math.nan,
                                                                                 dtype=torch.float64))
    gn = gnorm.detach().to(torch.float64)
    xnorm = x.detach().flatten(1).to(torch.float64).norm(dim=1)
    return SignFlipResult(delta=delta, grad_norm=gn, eta=delta / gn, flipped=flipped,
                          walked=walked, rel_delta=delta / xnorm)
