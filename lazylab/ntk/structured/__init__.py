"""Structured NTK: per-layer rules from input activations ``A`` and output cotangents ``G``.

For every supported layer (``nn.Linear``, ``nn.Conv1d/2d``: see :mod:`.linear`, :mod:`.conv`) one
forward pass with hooks records the layer inputs ``A`` and outputs; ``O`` backward passes (one per
output dim, only down to the layer outputs: no weight gradients) give the cotangents ``G``. A layer
called several times (weight sharing) has its calls concatenated along the position axis ``t``, so
its per-example gradient is ``J = sum_{calls, t} G_t (x) A_t`` and all cross terms between calls are
in the kernel. The block of one layer, trace output, ``T = 1``, is

    K_layer = (G~ G~'^T) * (w A A'^T + b),   G~ = G reshaped (N, O * d_out),

(``w``/``b`` = whether weight/bias are selected): two matmuls and an elementwise product, cost
``N1 N2 (d_in + O d_out)``, instead of ``N1 N2 O d_in d_out`` for the explicit Jacobian. With
``T > 1`` (convolutions, sequences) it uses the position Gram or the explicit per-example gradients,
whichever the cost model says is cheaper. Parameters not covered by a rule (other layers, tied
weights across different modules, layers whose hooks cannot be trusted) use the Jacobian path.

Safety check: before computing, the recorded ``A``, ``G`` of two probe examples are used to
rebuild the parameter gradient of ``sum f(x)``, which is compared with autograd's. A layer whose
parameter is also used outside its own forward (functional use), or whose batch axis is not axis 0,
fails the check and goes to the Jacobian path (a ``RuntimeWarning`` says so).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lazylab.ntk import jacobian
from lazylab.ntk.problem import Problem
from lazylab.ntk.structured import conv, linear

RULES = (linear, conv)


@dataclass
class Group:
    """One supported module and its selected parameters."""

    module: nn.Module
    rule: object
    weight: str | None
    bias: str | None
    t: int = 1
    d_in: int = 0
    d_out: int = 0
    explicit: bool = False

    @property
    def names(self) -> list[str]:
        return [n for n in (self.weight, self.bias) if n is not None]


def _rule(module: nn.Module) -> object | None:
    for r in RULES:
        if r.supports(module):
            return r
    return None


def _candidates(problem: Problem) -> list[Group]:
    mods = dict(problem.module.named_modules())
    counts = Counter(id(p) for m in set(mods.values()) for p in m._parameters.values()
                     if p is not None)
    groups = []
    for prefix, m in mods.items():
        rule = _rule(m)
        if rule is None:
            continue
        names = {}
        for local in ("weight", "bias"):
            p = m._parameters.get(local)
            full = f"{prefix}.{local}" if prefix else local
            if p is not None and full in problem.params and counts[id(p)] == 1:
                names[local] = full
        if names:
            groups.append(Group(m, rule, names.get("weight"), names.get("bias")))
    return groups


def _cotangents(y: Tensor, outs: list[Tensor]) -> list[Tensor]:
    """``d y[:, a].sum() / d out`` for every recorded output, stacked over ``a``: ``(O, *out)``.

    ``O`` backward passes down to the recorded outputs (a vmapped ``is_grads_batched`` backward
    was measured 3-5x slower for convolutions on CPU).
    """
    o = y.shape[1]
    res = [torch.zeros((o, *t.shape), dtype=t.dtype, device=t.device) for t in outs]
    for a in range(o):
        gs = torch.autograd.grad(y[:, a].sum(), outs, retain_graph=a < o - 1, allow_unused=True)
        for r, g in zip(res, gs):
            if g is not None:
                r[a] = g
    return res


def capture(problem: Problem, groups: list[Group], x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per group ``(A (N, d_in, T), G (O, N, d_out, T))`` for the inputs ``x``.

    ``T`` = positions (1 for a plain linear layer), concatenated over the calls of a shared layer.
    """
    ins: list[list[Tensor]] = [[] for _ in groups]
    outs: list[list[Tensor]] = [[] for _ in groups]
    handles = []
    for i, g in enumerate(groups):
        def hook(mod: nn.Module, inp: tuple, out: Tensor, i: int = i) -> Tensor:
            ins[i].append(inp[0].detach())
            outs[i].append(out)
            return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch `out`

        handles.append(g.module.register_forward_hook(hook))
    params = {k: v.detach().requires_grad_(True) for k, v in problem.params.items()}
    try:
        with torch.enable_grad():
            y = problem.f(params, x)
    finally:
        for h in handles:
            h.remove()
    n = y.shape[0]
    flat = [t for lst in outs for t in lst]
    cots = _cotangents(y, flat) if flat else []
    result, j = [], 0
    for i, g in enumerate(groups):
        a_rows, g_rows = [], []
        for inp in ins[i]:
            if inp.shape[0] != n:
                raise _Untrusted(g)
            a_rows.append(g.rule.rows_in(g.module, inp))
            g_rows.append(g.rule.rows_out(g.module, cots[j].detach()))
            j += 1
        if not a_rows:
            raise _Untrusted(g)
        if len(a_rows) == 1:
            result.append((a_rows[0], g_rows[0]))
        else:
            result.append((torch.cat(a_rows, -1), torch.cat(g_rows, -1)))
    return result


class _Untrusted(Exception):
    def __init__(self, group: Group) -> None:
        self.group = group


def explicit_features(group: Group, a: Tensor, g: Tensor) -> list[Tensor]:
    """Per-example gradients ``[(N, O, d_out d_in), (N, O, d_out)]`` of the selected parameters.

    ``J_W[n, o] = G[o, n] A[n]^T`` (``(d_out, T) @ (T, d_in)``): one batched matmul per output.
    """
    feats = []
    o, n, d, t = g.shape
    if group.weight is not None:
        gn = g[0] if o == 1 else g.transpose(0, 1).reshape(n, o * d, t)
        jw = torch.bmm(gn, a.transpose(1, 2))  # (N, O d, d_in)
        feats.append(jw.reshape(n, o, -1))
    if group.bias is not None:
        feats.append(g.sum(3).transpose(0, 1))
    return feats


def gram_block(group: Group, s1: tuple[Tensor, Tensor], s2: tuple[Tensor, Tensor],
               output: str) -> Tensor:
    """Kernel of one layer from ``(A, G)`` of both tiles, without forming per-example gradients."""
    (a1, g1), (a2, g2) = s1, s2
    o, n1, d, t1 = g1.shape
    n2, t2 = g2.shape[1], g2.shape[3]
    w, b = float(group.weight is not None), float(group.bias is not None)
    if t1 == 1 and t2 == 1:
        if w:
            ag = a1[:, :, 0] @ a2[:, :, 0].T
            if b:
                ag += b
        else:
            ag = torch.full((n1, n2), b, dtype=g1.dtype, device=g1.device)
        g1, g2 = g1[..., 0], g2[..., 0]  # (O, N, d)
        if output == "trace":
            if o == 1:
                gg = g1[0] @ g2[0].T
            else:
                gg = g1.transpose(0, 1).reshape(n1, -1) @ g2.transpose(0, 1).reshape(n2, -1).T
            return gg.mul_(ag)
        if output == "full":
            gg = (g1.reshape(o * n1, d) @ g2.reshape(o * n2, d).T).reshape(o, n1, o, n2)
            return ag[:, :, None, None] * gg.permute(1, 3, 0, 2)
        return ag[:, :, None] * torch.bmm(g1, g2.transpose(1, 2)).permute(1, 2, 0)
    ag = (a1.transpose(1, 2).reshape(n1 * t1, -1) @ a2.transpose(1, 2).reshape(n2 * t2, -1).T)
    ag = ag * w + b
    if output == "trace":
        gg = g1.permute(1, 3, 0, 2).reshape(n1 * t1, -1) @ g2.permute(1, 3, 0, 2).reshape(
            n2 * t2, -1).T
        return (ag * gg).reshape(n1, t1, n2, t2).sum((1, 3))
    gg = torch.bmm(g1.transpose(2, 3).reshape(o, n1 * t1, d),
                   g2.transpose(2, 3).reshape(o, n2 * t2, d).transpose(1, 2))
    return (ag * gg).reshape(o, n1, t1, n2, t2).sum((2, 4)).permute(1, 2, 0)


def gram_cost(t: int, d_in: int, d_out: int, o: int, output: str) -> float:
    """Multiply-adds per tile-pair entry ``(n, m)`` of the Gram rule."""
    if output == "full":
        return float("inf") if t > 1 else d_in + o * o * d_out
    return t * t * (d_in + o * d_out)


def explicit_cost(t: int, d_in: int, d_out: int, o: int, output: str, n: int) -> float:
    """Multiply-adds per entry of the explicit rule (building cost amortised over a tile ``n``)."""
    f = d_out * d_in
    return o * f * (o if output == "full" else 1) + 2 * t * o * f / max(n, 1)


class StructuredEngine:
    """``prepare(x)``: layer ``(A, G)`` (or explicit gradients) + Jacobians of the other params.

    ``block(s1, s2)``: sum of the per-layer blocks.
    """

    def __init__(self, problem: Problem, output: str, acc_dtype: torch.dtype | None,
                 probe: Tensor, tile: int) -> None:
        self.problem, self.output, self.acc_dtype = problem, output, acc_dtype
        self.n_out = 1
        self.groups = self._plan(probe)
        self.set_tile(tile)
        covered = {n for g in self.groups for n in g.names}
        self.rest = [n for n in problem.params if n not in covered]

    def _plan(self, probe: Tensor) -> list[Group]:
        groups, rec = _candidates(self.problem), []
        while groups:
            try:
                rec = capture(self.problem, groups, probe)
            except _Untrusted as e:
                groups = [g for g in groups if g is not e.group]
                continue
            bad = self._verify(groups, rec, probe)
            if not bad:
                break
            warnings.warn(
                f"ntk(method='structured'): the layer rule does not reproduce autograd's gradient "
                f"for {[n for g in bad for n in g.names]} (parameter used outside its module, or "
                "batch not on axis 0); those parameters use the Jacobian path.",
                RuntimeWarning, stacklevel=4)
            groups = [g for g in groups if g not in bad]
        for g, (a, gg) in zip(groups, rec):
            self.n_out = gg.shape[0]
            g.t, g.d_in, g.d_out = a.shape[2], a.shape[1], gg.shape[2]
        return groups

    def set_tile(self, tile: int) -> None:
        """Per layer, the cheaper of the Gram and explicit rules for tiles of ``tile`` examples."""
        for g in self.groups:
            g.explicit = explicit_cost(g.t, g.d_in, g.d_out, self.n_out, self.output, tile) < (
                gram_cost(g.t, g.d_in, g.d_out, self.n_out, self.output))

    def _verify(self, groups: list[Group], rec: list, probe: Tensor) -> list[Group]:
        names = [n for g in groups for n in g.names]
        params = {k: v.detach().requires_grad_(k in names) for k, v in self.problem.params.items()}
        with torch.enable_grad():
            y = self.problem.f(params, probe)
            true = dict(zip(names, torch.autograd.grad(y.sum(), [params[n] for n in names],
                                                       allow_unused=True)))
        eps = 1e-3 if self.problem.dtype != torch.float64 else 1e-9
        bad = []
        for g, (a, gg) in zip(groups, rec):
            rebuilt = {}
            if g.weight is not None:
                rebuilt[g.weight] = torch.einsum("ondp,nip->di", gg, a)
            if g.bias is not None:
                rebuilt[g.bias] = gg.sum((0, 1, 3))
            for n, r in rebuilt.items():
                t = true[n]
                t = torch.zeros_like(r) if t is None else t.reshape(r.shape)
                scale = max(t.abs().max().item(), r.abs().max().item(), 1e-30)
                if (t - r).abs().max().item() > eps * scale:
                    bad.append(g)
                    break
        return bad

    def prepare(self, x: Tensor) -> tuple[list, list[Tensor]]:
        layer = []
        if self.groups:
            for g, (a, gg) in zip(self.groups, capture(self.problem, self.groups, x)):
                layer.append(explicit_features(g, a, gg) if g.explicit else (a, gg))
        return layer, jacobian.jacobian_features(self.problem, x, self.rest)

    def block(self, s1: tuple, s2: tuple) -> Tensor:
        acc = self.acc_dtype
        total = jacobian.contract(s1[1], s2[1], self.output, acc)
        for g, f1, f2 in zip(self.groups, s1[0], s2[0]):
            if g.explicit:
                k = jacobian.contract(f1, f2, self.output, acc)
            else:
                if acc is not None:
                    f1 = tuple(t.to(acc) for t in f1)
                    f2 = tuple(t.to(acc) for t in f2)
                k = gram_block(g, f1, f2, self.output)
            total = k if total is None else total + k
        return total

    def flops_per_entry(self) -> float:
        """Contraction multiply-adds per kernel entry (used by the ``auto`` cost model)."""
        o = self.n_out
        return sum(
            explicit_cost(g.t, g.d_in, g.d_out, o, self.output, 1 << 30) if g.explicit
            else gram_cost(g.t, g.d_in, g.d_out, o, self.output) for g in self.groups)
