"""The structured NTK engine: capture ``A`` and ``G`` with hooks, verify the rules once, contract.

One forward pass with hooks records each supported layer's input ``A`` and output; ``O`` backward
passes (one per output dim, only down to the layer outputs: no weight gradients) give the output
cotangents ``G (N, O, d_out, T)``. A layer called several times (weight sharing) has its calls
concatenated along the position axis ``t``, so all cross terms between calls are in the kernel.
Each layer is then contracted by its rule (one file per layer type: :mod:`.linear`, :mod:`.conv`,
:mod:`.hf_conv1d`, :mod:`.embedding`, :mod:`.layernorm`, :mod:`.batchnorm`) in one of two forms:

- Gram (``"matmul"`` and ``"gather"`` rules): ``K = sum_{t,t'} (G G'^T)_{tt'} (w A A'^T + b)_{tt'}``
  from the position Gram of the inputs, cost ``N1 N2 T^2 (d_in + O d_out)`` (``T = 1``: the classic
  ``(G G'^T) * (A A'^T + 1)``);
- explicit per-example gradients (``"matmul"`` and ``"elementwise"`` rules), built by a batched
  matmul (``N O T d_in d_out``) and contracted together with the other explicit blocks in one
  matmul (``N1 N2 O d_in d_out``).

A matmul layer takes the cheaper form for the tile size. Parameters not covered by a rule (other
layers, tied weights across modules, layers whose hooks cannot be trusted) use the Jacobian path.

Safety check, once per model structure: the recorded ``A``, ``G`` of two probe examples rebuild the
gradient of ``sum_n c_n sum_o f_o(x_n)`` (distinct weights ``c_n`` per example) for every layer,
compared with autograd's. A layer whose parameter is also
used outside its own forward, or whose batch axis is not axis 0, fails and goes to the Jacobian path
(a ``RuntimeWarning`` says so). The verdict is cached per module instance and structure (module
names and types, selected parameter shapes, dtype, device, input shape): later calls run no probe.
"""

from __future__ import annotations

import warnings
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.ntk import jacobian
from lazylab.ntk.problem import Problem
from lazylab.ntk.structured import batchnorm, conv, embedding, hf_conv1d, layernorm, linear

RULES = (linear, conv, hf_conv1d, embedding, layernorm, batchnorm)

#: module -> {structure signature: (trusted param names, {weight name: (t, d_in, d_out)}, O)}
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    @property
    def key(self) -> str:
        return self.names[0]


def rule_for(module: nn.Module) -> object | None:
    """The rule module that supports ``module``, or None."""
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
        rule = rule_for(m)
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
    """``d y[:, a].sum() / d out`` for every recorded output, stacked on axis 1: ``(N, O, ...)``.

    ``O`` backward passes down to the recorded outputs (a vmapped ``is_grads_batched`` backward
    was measured 3-5x slower for convolutions on CPU).
    """
    o = y.shape[1]
    if o == 1:
        gs = torch.autograd.grad(y.sum(), outs, allow_unused=True)
        return [torch.zeros_like(t).unsqueeze(1) if g is None else g.unsqueeze(1)
                for t, g in zip(outs, gs)]
    res = [torch.empty((t.shape[0], o, *t.shape[1:]), dtype=t.dtype, device=t.device)
           for t in outs]
    for a in range(o):
        gs = torch.autograd.grad(y[:, a].sum(), outs, retain_graph=a < o - 1, allow_unused=True)
        for r, g in zip(res, gs):
            if g is None:
                r[:, a].zero_()
            else:
                r[:, a] = g
    return res


class _Untrusted(Exception):
    def __init__(self, group: Group) -> None:
        self.group = group


def _record(problem: Problem, groups: list[Group], x: Tensor
            ) -> tuple[Tensor, list[list[Tensor]], list[list[Tensor]]]:
    """Forward pass with hooks: ``(y (N, O), inputs per group and call, outputs per group and call)``.

    Raises ``_Untrusted`` for a layer never called or called on another batch size.
    """
    ins: list[list[Tensor]] = [[] for _ in groups]
    outs: list[list[Tensor]] = [[] for _ in groups]
    handles = []
    n = fn.batch_size(x)
    for i, g in enumerate(groups):
        def hook(mod: nn.Module, inp: tuple, out: Tensor, i: int = i) -> Tensor:
            a = inp[0]
            if n > 1 and isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == 1 == out.shape[0]:
                # a batch-1 call broadcast over the batch later (GPT-2's position ids): expand
                # it, so that its cotangent is per example (the check verifies the result)
                a, out = a.expand(n, *a.shape[1:]), out.expand(n, *out.shape[1:])
            ins[i].append(a.detach() if isinstance(a, Tensor) else a)
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
    if y.shape[0] != n:
        raise ValueError(f"the model maps {n} examples to {y.shape[0]} output rows")
    for g, lst in zip(groups, ins):
        if not lst or any(not isinstance(a, Tensor) or a.shape[0] != n for a in lst):
            raise _Untrusted(g)
    return y, ins, outs


def _join(a_rows: list[Tensor], g_rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Calls of a shared layer concatenated along the position axis."""
    if len(a_rows) == 1:
        return a_rows[0], g_rows[0]
    return torch.cat(a_rows, -1), torch.cat(g_rows, -1)


def capture(problem: Problem, groups: list[Group], x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per group ``(A, G)``: rule-specific input rows and cotangents ``(N, O, d_out, T)``.

    ``T`` = positions (1 for a plain linear layer), concatenated over the calls of a shared layer.
    """
    y, ins, outs = _record(problem, groups, x)
    cots = iter(_cotangents(y, [t for lst in outs for t in lst]))
    return [_join([g.rule.rows_in(g.module, a) for a in ins[i]],
                  [g.rule.rows_out(g.module, next(cots)) for _ in ins[i]])
            for i, g in enumerate(groups)]


def capture_features(problem: Problem, groups: list[Group], x: Tensor) -> list:
    """Per group: ``(A, G)`` for a Gram-rule layer, its per-example gradients ``[(N, O, F)]`` for
    an explicit one. The explicit ones are built one output at a time from that output's
    cotangent, so their ``(N, O, d_out, T)`` cotangents are never stored (for a convolution that
    is ``O P / (d_in)`` times the size of its per-example gradients)."""
    y, ins, outs = _record(problem, groups, x)
    n, o = y.shape
    a_rows = [[g.rule.rows_in(g.module, a) for a in ins[i]] for i, g in enumerate(groups)]
    flat = [t for lst in outs for t in lst]
    bufs = [[] if g.explicit else [torch.empty((n, o, *t.shape[1:]), dtype=t.dtype,
                                               device=t.device) for t in outs[i]]
            for i, g in enumerate(groups)]
    feats: list[list[Tensor] | None] = [None] * len(groups)
    for a in range(o):
        gs = iter(torch.autograd.grad(y[:, a].sum(), flat, retain_graph=a < o - 1,
                                      allow_unused=True))
        for i, g in enumerate(groups):
            for c, t in enumerate(outs[i]):
                ga = next(gs)
                ga = torch.zeros_like(t) if ga is None else ga
                if not g.explicit:
                    bufs[i][c][:, a] = ga
                    continue
                f = g.rule.per_example(g.module, a_rows[i][c],
                                       g.rule.rows_out(g.module, ga.unsqueeze(1)),
                                       g.weight is not None, g.bias is not None)
                if feats[i] is None:
                    feats[i] = [torch.zeros((n, o, q.shape[2]), dtype=q.dtype, device=q.device)
                                for q in f]
                for acc, q in zip(feats[i], f):
                    acc[:, a] += q[:, 0]
    return [feats[i] if g.explicit else _join(a_rows[i], [g.rule.rows_out(g.module, b)
                                                          for b in bufs[i]])
            for i, g in enumerate(groups)]


def gram_block(group: Group, s1: tuple[Tensor, Tensor], s2: tuple[Tensor, Tensor],
               output: str) -> Tensor:
    """Kernel of one layer from ``(A, G)`` of both tiles, without forming per-example gradients."""
    (a1, g1), (a2, g2) = s1, s2
    n1, o, d, t1 = g1.shape
    n2, t2 = g2.shape[0], g2.shape[3]
    w, b = float(group.weight is not None), float(group.bias is not None)
    if t1 == 1 and t2 == 1 and group.rule.KIND == "matmul":
        if w:
            ag = a1[:, :, 0] @ a2[:, :, 0].T
            if b:
                ag += b
        else:
            ag = torch.full((n1, n2), b, dtype=g1.dtype, device=g1.device)
        g1, g2 = g1[..., 0], g2[..., 0]  # (N, O, d)
        if output == "trace":
            return (g1.reshape(n1, -1) @ g2.reshape(n2, -1).T).mul_(ag)
        if output == "full":
            gg = (g1.reshape(n1 * o, d) @ g2.reshape(n2 * o, d).T).reshape(n1, o, n2, o)
            return ag[:, :, None, None] * gg.permute(0, 2, 1, 3)
        return ag[:, :, None] * torch.bmm(g1.transpose(0, 1), g2.permute(1, 2, 0)).permute(1, 2, 0)
    ag = group.rule.input_gram(a1, a2).to(g1.dtype)  # (N1 T1, N2 T2)
    if w != 1.0 or b:
        ag = ag * w + b
    r1 = g1.permute(0, 3, 1, 2)  # (N, T, O, d)
    r2 = g2.permute(0, 3, 1, 2)
    if output == "trace":
        gg = r1.reshape(n1 * t1, -1) @ r2.reshape(n2 * t2, -1).T
        return (ag * gg).reshape(n1, t1, n2, t2).sum((1, 3))
    if output == "full":
        gg = (r1.reshape(n1 * t1 * o, d) @ r2.reshape(n2 * t2 * o, d).T).reshape(
            n1, t1, o, n2, t2, o)
        k = (gg * ag.reshape(n1, t1, 1, n2, t2, 1)).sum((1, 4))  # (N1, O, N2, O)
        return k.permute(0, 2, 1, 3)
    gg = torch.bmm(r1.permute(2, 0, 1, 3).reshape(o, n1 * t1, d),
                   r2.permute(2, 0, 1, 3).reshape(o, n2 * t2, d).transpose(1, 2))
    return (ag * gg).reshape(o, n1, t1, n2, t2).sum((2, 4)).permute(1, 2, 0)


def gram_cost(t: int, d_in: int, d_out: int, o: int, output: str) -> float:
    """Multiply-adds per tile-pair entry ``(n, m)`` of the Gram rule."""
    if output == "full":
        return d_in + o * o * d_out if t == 1 else t * t * (d_in + o * o * d_out)
    return t * t * (d_in + o * d_out)


def explicit_cost(t: int, d_in: int, d_out: int, o: int, output: str, n: int) -> float:
    """Multiply-adds per entry of the explicit rule (building cost amortised over a tile ``n``)."""
    f = d_out * d_in
    return o * f * (o if output == "full" else 1) + 2 * t * o * f / max(n, 1)


def _signature(problem: Problem, probe: Tensor) -> tuple:
    mods = tuple((n, type(m).__qualname__) for n, m in problem.module.named_modules())
    ps = tuple((n, tuple(p.shape)) for n, p in problem.params.items())
    xs = tuple((tuple(t.shape[1:]), t.dtype) for t in fn.leaves(probe))
    return (mods, ps, problem.dtype, str(problem.device), xs)


def clear_plans() -> None:
    """Forget every cached verification verdict (e.g. after changing what a model's forward does)."""
    _PLANS.clear()


FEATURE_CAT_BYTES = 64 << 20  # explicit features below this are concatenated: one matmul per block


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
        cands = _candidates(self.problem)
        if not cands:
            return []
        sig = _signature(self.problem, probe)
        per = _PLANS.get(self.problem.module)
        if per is None:
            per = _PLANS[self.problem.module] = {}
        if sig not in per:
            per[sig] = self._verified(cands, probe)
        trusted, shapes, self.n_out = per[sig]
        groups = [g for g in cands if g.key in trusted]
        for g in groups:
            g.t, g.d_in, g.d_out = shapes[g.key]
        return groups

    def _verified(self, groups: list[Group], probe: Tensor) -> tuple[set, dict, int]:
        """Capture on the probe, drop untrusted layers until every rule matches autograd."""
        rec: list = []
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
                RuntimeWarning, stacklevel=5)
            groups = [g for g in groups if g not in bad]
        shapes, n_out = {}, 1
        for g, (a, gg) in zip(groups, rec):
            n_out = gg.shape[1]
            t, d_in = g.rule.dims(a)
            shapes[g.key] = (t, d_in, gg.shape[2])
        return {g.key for g in groups}, shapes, n_out

    def _verify(self, groups: list[Group], rec: list, probe: Tensor) -> list[Group]:
        names = [n for g in groups for n in g.names]
        params = {k: v.detach().requires_grad_(k in names) for k, v in self.problem.params.items()}
        # distinct weights per example: a rule that mixes examples (batch not on axis 0) fails
        c = torch.tensor([(i + 1) * (-1.5) ** i for i in range(fn.batch_size(probe))],
                         dtype=self.problem.dtype, device=self.problem.device)
        with torch.enable_grad():
            y = self.problem.f(params, probe)
            true = dict(zip(names, torch.autograd.grad((y.sum(1) * c).sum(),
                                                       [params[n] for n in names],
                                                       allow_unused=True)))
        eps = 1e-3 if self.problem.dtype != torch.float64 else 1e-9
        bad = []
        for g, (a, gg) in zip(groups, rec):
            gw, gb = g.rule.grad_of_sum(g.module, a, gg * c.reshape(-1, 1, 1, 1))
            rebuilt = {}
            if g.weight is not None:
                rebuilt[g.weight] = g.rule.weight_shape(g.module, gw)
            if g.bias is not None:
                rebuilt[g.bias] = gb
            pairs = []
            for n, r in rebuilt.items():
                t = true[n]
                pairs.append((torch.zeros_like(r) if t is None else t.reshape(r.shape), r))
            # one scale per layer: a bias whose gradient is 0 by symmetry (keys' bias under
            # softmax) is compared at the scale of its weight's gradient, not of rounding noise
            scale = max(max(t.abs().max().item(), r.abs().max().item()) for t, r in pairs)
            err = max((t - r).abs().max().item() for t, r in pairs)
            if err > eps * max(scale, 1e-30):
                bad.append(g)
        return bad

    def set_tile(self, tile: int) -> None:
        """Per layer, the cheaper of the Gram and explicit rules for tiles of ``tile`` examples."""
        for g in self.groups:
            if g.rule.input_gram is None:
                g.explicit = True
                continue
            g.explicit = g.rule.per_example is not None and explicit_cost(
                g.t, self.width(g), g.d_out, self.n_out, self.output, tile) < gram_cost(
                g.t, g.d_in, g.d_out, self.n_out, self.output)

    def prepare(self, x: Tensor) -> tuple[list, list[Tensor]]:
        grams, feats = [], []
        if self.groups:
            for g, r in zip(self.groups, capture_features(self.problem, self.groups, x)):
                if g.explicit:
                    feats += r
                else:
                    grams.append(r)
        feats += jacobian.jacobian_features(self.problem, x, self.rest)
        if len(feats) > 1 and sum(f.numel() * f.element_size() for f in feats) < FEATURE_CAT_BYTES:
            feats = [torch.cat([f.reshape(f.shape[0], f.shape[1], -1) for f in feats], 2)]
        return grams, feats

    def block(self, s1: tuple, s2: tuple) -> Tensor:
        acc = self.acc_dtype
        total = jacobian.contract(s1[1], s2[1], self.output, acc)
        for g, f1, f2 in zip([g for g in self.groups if not g.explicit], s1[0], s2[0]):
            if acc is not None:
                f1 = tuple(t if not t.is_floating_point() else t.to(acc) for t in f1)
                f2 = tuple(t if not t.is_floating_point() else t.to(acc) for t in f2)
            k = gram_block(g, f1, f2, self.output)
            total = k if total is None else total + k
        return total

    def flops_per_entry(self) -> float:
        """Contraction multiply-adds per kernel entry (used by the ``auto`` cost model)."""
        o = self.n_out
        return sum(
            explicit_cost(g.t, self.width(g), g.d_out, o, self.output, 1 << 30) if g.explicit
            else gram_cost(g.t, g.d_in, g.d_out, o, self.output) for g in self.groups)

    @staticmethod
    def width(g: Group) -> int:
        """Input width of the explicit gradients (the table size for a gather)."""
        return g.module.num_embeddings if g.rule.KIND == "gather" else g.d_in

    def build_flops(self) -> float:
        """Multiply-adds per example to build the explicit per-example gradients."""
        return float(sum(self.n_out * g.t * g.d_in * g.d_out for g in self.groups if g.explicit))

    def forward_flops(self) -> float:
        """Multiply-adds of one forward pass per example, from the covered layers' shapes."""
        return float(sum(g.t * g.d_in * g.d_out for g in self.groups))
