"""Empirical NTK speed on transformers: ``lazylab.ntk`` (``auto``) vs the torch.func baseline.

Models (random weights, eval mode, one scalar output read at the last position):

- ``decoder``: a decoder-only transformer written with ``F.scaled_dot_product_attention``
  (token + position ``nn.Embedding``, pre-LayerNorm blocks with ``nn.Linear`` q/k/v/out
  projections and a GELU MLP, final LayerNorm, ``nn.Linear`` head);
- ``gpt2``: a tiny Hugging Face ``GPT2Model`` built from a ``GPT2Config`` (no download; its
  projections are ``Conv1D``) with an ``nn.Linear`` head.

N = 64 sequences of 24 tokens (vocabulary 512), width 64 and 256, 2 layers. Baseline: the
torch.func tutorial's Jacobian contraction (``vmap(jacrev)`` Jacobians of ``x1`` and ``x2``,
einsum per parameter), called with ``x1 = x2 = X``. lazylab computes ``K(X, X)`` with ``x2=None``
(symmetric) and, as a fairer row, with a distinct ``x2`` tensor. All in one process, same weights
and tokens, results checked against the baseline; the methods run round robin ``--repeats``
times (min and median reported; speed-up = baseline min / method min).

Usage: ``python benchmarks/bench_ntk_transformer.py [--widths 64 256] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/baselines.py
from baselines import tutorial_ntk  # noqa: E402

from lazylab.ntk import ntk  # noqa: E402
from lazylab.transformer import CausalDecoder  # noqa: E402


def Decoder(vocab: int = 512, d: int = 64, layers: int = 2, heads: int = 4, max_len: int = 64,
            out: int = 1) -> nn.Module:
    """Decoder-only transformer on token ids ``(N, T)`` -> ``(N, out)``
    (:class:`lazylab.transformer.CausalDecoder`)."""
    return CausalDecoder(vocab, d, layers=layers, heads=heads, max_len=max_len, out=out)


class GPT2Head(nn.Module):
    """Tiny Hugging Face GPT-2 (random init from a config) with a linear head at the last token."""

    def __init__(self, vocab: int = 512, d: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 64, out: int = 1) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads,
                         n_positions=max_len, use_cache=False, bos_token_id=0, eos_token_id=0)
        self.gpt = GPT2Model(cfg)
        self.head = nn.Linear(d, out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.gpt(input_ids=ids, use_cache=False).last_hidden_state
        return self.head(h[:, -1])


def auto_choice(model: nn.Module, x: torch.Tensor) -> str:
    from lazylab.ntk.api import _choose
    from lazylab.ntk.problem import build_problem
    from lazylab.ntk.structured import StructuredEngine

    pb = build_problem(model)
    with pb.eval_mode():
        st = StructuredEngine(pb, "trace", None, x[:2], len(x))
        o = pb.f(pb.params, x[:1]).shape[1]
        return _choose(pb, st, len(x), len(x), o, "trace", True)


def run(name: str, model: nn.Module, x: torch.Tensor, repeats: int) -> list[dict]:
    model.eval()
    x2 = x.clone()
    methods = {
        "torch.func tutorial": lambda: tutorial_ntk(model, x, x),
        "auto": lambda: ntk(model, x, progress=False),
        "structured": lambda: ntk(model, x, method="structured", progress=False),
        "jacobian": lambda: ntk(model, x, method="jacobian", progress=False),
        "auto (x2 given)": lambda: ntk(model, x, x2, progress=False),
    }
    for fn in methods.values():
        fn()  # warm-up (the first structured call also verifies the layer rules, once)
    times: dict[str, list[float]] = {m: [] for m in methods}
    outs = {}
    for _ in range(repeats):  # round robin: a load spike hits every method alike
        for m, fn in methods.items():
            t = time.perf_counter()
            outs[m] = fn()
            times[m].append(time.perf_counter() - t)
    ref, base = outs["torch.func tutorial"], min(times["torch.func tutorial"])
    rows = []
    for m in methods:
        label = f"auto -> {auto_choice(model, x)}" if m == "auto" else m
        rows.append({"model": name, "method": label, "min_s": min(times[m]),
                     "median_s": statistics.median(times[m]), "speedup": base / min(times[m]),
                     "rel_err": float((outs[m] - ref).abs().max() / ref.abs().max())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--models", nargs="+", default=["decoder", "gpt2"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # vmap over fused attention
    import pandas as pd

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for w in args.widths:
        for name in args.models:
            torch.manual_seed(0)
            model = (Decoder if name == "decoder" else GPT2Head)(d=w)
            x = torch.randint(0, 512, (args.n, args.seq))
            p = sum(q.numel() for q in model.parameters())
            rows += run(f"{name} w{w} ({p / 1e6:.2f}M params)", model, x, args.repeats)
            print(pd.DataFrame(rows[-5:]).to_string(index=False, float_format=lambda v: f"{v:.3g}"),
                  flush=True)


if __name__ == "__main__":
    main()
