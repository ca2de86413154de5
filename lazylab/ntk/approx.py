"""Approximate empirical NTKs, each with its error measured against the exact kernel.

- :func:`pseudo_ntk`: the "sum of logits" kernel of Mohamadi, Bae & Sutherland (ICML 2023). For a
  model with ``O`` outputs it is the NTK of the scalar ``g(x) = O^{-1/2} sum_c f_c(x)``:

      pNTK(x, x') = (1/O) sum_{c, c'} <grad f_c(x), grad f_c'(x')>,

  an ``N1 x N2`` kernel (one output instead of ``O``: ``O`` times cheaper than the trace kernel,
  ``O^2`` less memory than the full one). It approximates the full eNTK as ``pNTK (x) I_O``; the
  paper shows that this becomes exact at initialisation as the readout layer gets wide (the
  cross-output terms vanish and the diagonal blocks become equal). The normalisation ``1/O`` is
  our choice (the paper's exact factor was not available to us); with it, ``pNTK`` equals
  ``trace-NTK / O`` whenever the full kernel is ``k (x) I_O``.
- :func:`projected_ntk`: a random-projection (Johnson-Lindenstrauss, TRAK-style) trace NTK.
  Per-example gradients ``g(x) in R^P`` (per output) are computed a batch at a time and
  projected at once to ``k`` dimensions, ``phi(x) = S g(x)`` with ``E[S^T S] = I``, so
  ``K~(x, x') = sum_c phi_c(x) . phi_c(x')`` is unbiased, ``E K~ = K``, with relative error
  ``~ 1/sqrt(k)``. The ``N x P`` Jacobian is never formed: memory ``batch O P + N O k``.
  Sketches: ``"rademacher"`` (dense ``+-1/sqrt(k)`` entries, regenerated block by block from
  seeds as TRAK's CPU projector does; cost ``N O P k``) or ``"countsketch"`` (each parameter
  hashed to one of ``k`` coordinates with a random sign, Clarkson-Woodruff; cost ``N O P``).
  TRAK scales its features by ``1/sqrt(P)`` instead of ``1/sqrt(k)`` (a kernel ``k/P`` times
  the NTK); here the estimate is unbiased.

Both return an :class:`Approximation`: the kernel and, when ``check > 0``, its relative Frobenius
error against the exact kernel (:func:`lazylab.ntk`) on the first ``check`` rows and columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lazylab.ntk.api import ntk
from lazylab.ntk.jacobian import jacobian_features
from lazylab.ntk.problem import build_problem

SKETCHES = ("rademacher", "countsketch")
BLOCK_ROWS = 1 << 15  # parameters per generated block of a dense sketch


@dataclass
class Approximation:
    """An approximate kernel and its measured error.

    Attributes:
        kernel: ``(N1, N2)`` approximate kernel.
        rel_error: ``||K~ - K||_F / ||K||_F`` on the checked block (None without a check).
        info: what was compared (``reference``), the block size, the method's parameters.
    """

    kernel: Tensor
    rel_error: float | None = None
    info: dict = field(default_factory=dict)


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def _check_count(check: int, n: int) -> int:
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ValueError(f"check must be an int >= 0 (examples in the checked block), got {check!r}")
    return min(check, n)


class _SumOfLogits(nn.Module):
    """``x -> O^{-1/2} sum_c f_c(x)`` (the model's own parameters: the NTK engine sees them)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        out = out.reshape(out.shape[0], -1)
        return out.sum(1) / out.shape[1] ** 0.5


def pseudo_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, check: int = 0,
               **ntk_kwargs: object) -> Approximation:
    """Sum-of-logits pseudo-NTK ``(1/O) sum_{c,c'} <grad f_c(x), grad f_c'(x')>`` ``(N1, N2)``.

    Cost: one NTK of a one-output model (``lazylab.ntk`` with ``**ntk_kwargs``, e.g. ``method``,
    ``params``, ``accumulate_dtype``). ``check = s``: the full kernel ``(s, s, O, O)`` of the first
    ``s`` examples is computed exactly and ``rel_error`` is the relative Frobenius error of
    ``pNTK (x) I_O`` against it; ``info["rel_error_trace"]`` compares ``pNTK`` with ``trace / O``.
    """
    if "output" in ntk_kwargs:
        raise ValueError("pseudo_ntk has one output per example: do not pass output=")
    s = _check_count(check, x1.shape[0] if x2 is None else min(x1.shape[0], x2.shape[0]))
    kw = dict(ntk_kwargs)
    sel = kw.get("params")
    if isinstance(sel, str):
        sel = [sel]
    if sel is not None and not callable(sel):
        kw["params"] = [f"model.{n}" for n in sel]
    elif callable(sel):
        kw["params"] = lambda n, p: n.startswith("model.") and sel(n[len("model."):], p)
    k = ntk(_SumOfLogits(model), x1, x2, **kw)
    if s == 0:
        return Approximation(k, None, {"O_normalisation": "1/O"})
    full = ntk(model, x1[:s], None if x2 is None else x2[:s], output="full",
               **ntk_kwargs).to(k.dtype)
    o = full.shape[-1]
    eye = torch.eye(o, dtype=k.dtype, device=k.device)
    approx = k[:s, :s, None, None] * eye
    trace = torch.diagonal(full, dim1=2, dim2=3).sum(-1) / o
    return Approximation(k, _rel(approx, full), {
        "reference": "full eNTK vs pNTK (x) I_O", "checked": s, "O": o,
        "rel_error_trace": _rel(k[:s, :s], trace), "O_normalisation": "1/O"})


def _sketch_block(f: Tensor, kdim: int, sketch: str, gen_seed: int) -> Tensor:
    """Project features ``f (B, O, p)`` of one parameter tensor to ``(B, O, k)``."""
    b, o, p = f.shape
    g = torch.Generator(device="cpu").manual_seed(gen_seed)
    if sketch == "countsketch":
        h = torch.randint(0, kdim, (p,), generator=g).to(f.device)
        sign = (torch.randint(0, 2, (p,), generator=g) * 2 - 1).to(f.device, f.dtype)
        out = torch.zeros(b, o, kdim, dtype=f.dtype, device=f.device)
        return out.index_add_(2, h, f * sign)
    out = torch.zeros(b, o, kdim, dtype=f.dtype, device=f.device)
    for start in range(0, p, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, p - start)
        proj = (torch.randint(0, 2, (rows, kdim), generator=g) * 2 - 1).to(f.device, f.dtype)
        out += f[:, :, start:start + rows] @ proj
    return out / kdim ** 0.5


def _projected_features(problem: object, x: Tensor, kdim: int, sketch: str, seed: int,
                        batch_size: int) -> Tensor:
    """``phi(x) (N, O, k)``: per-example gradients of a batch, projected at once."""
    feats = []
    for start in range(0, x.shape[0], batch_size):
        jac = jacobian_features(problem, x[start:start + batch_size])  # [(B, O, p_i)]
        feats.append(sum(_sketch_block(j, kdim, sketch, seed * 1_000_003 + i)
                         for i, j in enumerate(jac)))
        del jac
    return torch.cat(feats)


def projected_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, k: int,
                  sketch: str = "countsketch", seed: int = 0, batch_size: int = 32,
                  params: Sequence[str] | None = None, check: int = 0,
                  dtype: torch.dtype | None = None) -> Approximation:
    """Random-projection trace NTK ``sum_c (S g_c(x)) . (S g_c(x'))`` ``(N1, N2)``, unbiased.

    Args:
        k: projection dimension. sketch: ``"countsketch"`` or ``"rademacher"`` (see module doc).
        seed: the sketch ``S`` (same seed, same ``S``: ``x1`` and ``x2`` share it).
        batch_size: examples whose per-example gradients ``(B, O, P)`` are held at once.
        params, dtype: as in :func:`lazylab.ntk`. check: rows/columns compared with the exact
            trace kernel (``rel_error``).
    Cost: ``N O`` gradients (``vmap(jacrev)``) plus ``N O P`` (countsketch) or ``N O P k``
    (rademacher) for the projection and ``N1 N2 O k`` for the Gram matrix.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (projection dimension), got {k!r}")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    problem = build_problem(model, params, dtype)
    with problem.eval_mode():
        p1 = _projected_features(problem, problem.prep_input(x1), k, sketch, seed, batch_size)
        p2 = p1 if x2 is None else _projected_features(problem, problem.prep_input(x2), k,
                                                         sketch, seed, batch_size)
    kern = p1.reshape(p1.shape[0], -1) @ p2.reshape(p2.shape[0], -1).T
    info = {"k": k, "sketch": sketch, "seed": seed, "P": problem.n_params}
    s = _check_count(check, min(kern.shape))
    if s == 0:
        return Approximation(kern, None, info)
    exact = ntk(model, x1[:s], None if x2 is None else x2[:s], params=params, dtype=dtype)
    info.update(reference="exact trace NTK", checked=s)
    return Approximation(kern, _rel(kern[:s, :s], exact.to(kern.dtype)), info)


__all__ = ["Approximation", "pseudo_ntk", "projected_ntk", "SKETCHES"]
