"""Cost of the double-VJP fallback of :func:`lazylab.functional.jvp` against forward mode.

Where torch has no forward-mode rule (the mkldnn LSTM/GRU kernels in float32, fused attention),
lazylab computes a Jacobian-vector product ``J t`` as the VJP of the linear map ``u -> J^T u``
(one forward, two backward passes). This script times, on the same weights and inputs in one
process, for each model:

- ``forward``: one plain forward pass (the unit);
- ``jvp``: ``torch.func.jvp`` (forward mode), when torch supports it for the model;
- ``double_vjp``: the fallback;
- ``lin_step_*``: one training step of ``linearize(model)`` (forward + backward of the tangent
  model) with each mode, i.e. what a linearized run pays per step.

and checks that both modes give the same ``J t`` (max relative difference printed). Ratios
``double_vjp / jvp`` are the cost of the fallback. One torch thread, median of ``--repeats`` runs.

Usage: ``python benchmarks/bench_forward_fallback.py [--repeats R] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import lazylab  # noqa: E402
from lazylab import functional as fn  # noqa: E402


class Decoder(nn.Module):
    """Causal decoder-only transformer (F.scaled_dot_product_attention), next-token logits."""

    def __init__(self, vocab: int, d: int, layers: int, t: int, heads: int = 4) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(t, d))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d),
                           "proj": nn.Linear(d, d), "ln2": nn.LayerNorm(d),
                           "mlp": nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(),
                                                nn.Linear(4 * d, d))})
            for _ in range(layers))
        self.head, self.heads = nn.Linear(d, vocab), heads

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids) + self.pos[: ids.shape[1]]
        n, t, d = h.shape
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](h)).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + b["proj"](a.transpose(1, 2).reshape(n, t, d))
            h = h + b["mlp"](b["ln2"](h))
        return self.head(h[:, -1])


class Recurrent(nn.Module):
    def __init__(self, cls: type, d_in: int, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = cls(d_in, hidden, batch_first=True), nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x)
        return self.head((h[0] if isinstance(h, tuple) else h)[-1])


def cases(quick: bool) -> list[tuple[str, nn.Module, object, object]]:
    torch.manual_seed(0)
    n = 16 if quick else 64
    out = [
        ("mlp 784-512-512-10 f32", nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(
            512, 512), nn.ReLU(), nn.Linear(512, 10)), torch.randn(n, 784), None),
        ("cnn 3x32x32 f32", nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                          nn.Linear(512, 10)), torch.randn(n, 3, 32, 32), None),
        ("decoder d=128 L=2 T=32 f32", Decoder(256, 128, 2, 32), torch.randint(0, 256, (n, 32)),
         None),
        ("lstm h=128 T=32 f64", Recurrent(nn.LSTM, 32, 128).double(),
         torch.randn(n, 32, 32, dtype=torch.float64), None),
        ("lstm h=128 T=32 f32 (mkldnn)", Recurrent(nn.LSTM, 32, 128), torch.randn(n, 32, 32),
         None),
    ]
    try:
        import transformers

        cfg = transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=256,
                                      n_positions=32)
        gpt = transformers.GPT2LMHeadModel(cfg).eval()
        out.append(("hf gpt2 d=128 L=2 T=32 f32", gpt, torch.randint(0, 256, (n, 32)),
                    lambda o: o.logits[:, -1]))
    except ImportError:
        print("(transformers not installed: GPT-2 case skipped)")
    return out


def median_time(f: Callable[[], object], repeats: int) -> float:
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run_case(name: str, model: nn.Module, x: object, output_fn: object, repeats: int) -> dict:
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def f(p: dict) -> Tensor:
        return fn.call(model, p, x, output_fn)

    row: dict[str, object] = {"case": name}
    with torch.no_grad():
        row["forward"] = median_time(lambda: f(params), repeats)
    ref = fn.jvp(f, params, tangent, mode="double_vjp")[1]
    row["double_vjp"] = median_time(lambda: fn.jvp(f, params, tangent, mode="double_vjp"), repeats)
    try:
        got = fn.jvp(f, params, tangent, mode="forward")[1]
        row["jvp"] = median_time(lambda: fn.jvp(f, params, tangent, mode="forward"), repeats)
        row["max_rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
    except NotImplementedError:
        row["jvp"] = float("nan")
        row["max_rel_diff"] = float("nan")
    for mode in ("forward", "double_vjp"):
        lin = lazylab.linearize(copy.deepcopy(model), output_fn=output_fn, forward_mode=mode)
        args, kwargs = fn.call_args(x)

        def step(lin: nn.Module = lin) -> None:
            lin.zero_grad(set_to_none=True)
            lin(*args, **kwargs).pow(2).sum().backward()

        try:
            row[f"lin_step_{mode}"] = median_time(step, repeats)
        except NotImplementedError:
            row[f"lin_step_{mode}"] = float("nan")
    row["dvjp/jvp"] = row["double_vjp"] / row["jvp"]
    row["dvjp/forward"] = row["double_vjp"] / row["forward"]
    row["lin_step dvjp/jvp"] = row["lin_step_double_vjp"] / row["lin_step_forward"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="16 examples instead of 64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [run_case(*c, repeats=args.repeats) for c in cases(args.quick)]
    import pandas as pd

    df = pd.DataFrame(rows).set_index("case")
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.4g}".format):
        print(df)


if __name__ == "__main__":
    main()
