"""Diagnose a tiny Hugging Face GPT-2 on a token task: how lazy is its training?

The model is built from a config with random weights (no download). Task: sequences of ``T``
tokens with an attention mask (the last ``pad`` positions of some sequences are padding); the
label is whether the first token is in the lower half of the vocabulary, read from the logits of
the last real position's first two vocabulary entries (a selector, ``output_fn``). The inputs are
a dict ``{"input_ids", "attention_mask"}`` of integer tensors, passed to every lazylab entry point
as they are (``model(**x)``); nothing is cast.

Two runs: the model as given, and ``lazy(model, alpha)`` (Chizat et al.'s rescaling). The
diagnosis reports the kernel change and the gap to the linearized model for each.

Usage: ``python examples/diagnose_gpt2.py [--steps 200] [--n 128] [--alpha 100]``.
"""

from __future__ import annotations

import argparse

import torch
import transformers

import lazylab
from lazylab.functional import with_output


def make_task(n: int, t: int, vocab: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    mask = torch.ones_like(ids)
    short = torch.rand(n, generator=g) < 0.5
    mask[short, t - 2:] = 0  # right padding on half of the sequences
    y = (ids[:, 0] < vocab // 2).long()
    return {"input_ids": ids, "attention_mask": mask}, y


def last_real_logits(out: object, mask: torch.Tensor) -> torch.Tensor:
    """Logits of vocabulary entries 0 and 1 at the last non-padding position: (N, 2)."""
    last = mask.sum(1) - 1
    return out.logits[torch.arange(out.logits.shape[0]), last, :2]


class Classifier(torch.nn.Module):
    """GPT-2 read out at the last real token (the mask tells which one)."""

    def __init__(self, gpt: torch.nn.Module) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.gpt(input_ids=input_ids, attention_mask=attention_mask)
        return last_real_logits(out, attention_mask)


def main(argv: list[str] | None = None) -> dict[str, lazylab.diagnosis.DiagnosisReport]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="training sequences")
    ap.add_argument("--t", type=int, default=8, help="sequence length")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=100.0)
    ap.add_argument("--probe", type=int, default=32)
    args = ap.parse_args(argv)

    vocab = 16
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=args.width, n_layer=2, n_head=2, vocab_size=vocab,
                                  n_positions=args.t, bos_token_id=0, eos_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = Classifier(transformers.GPT2LMHeadModel(cfg)).double()
    data = make_task(args.n, args.t, vocab, seed=1)
    test = make_task(args.n, args.t, vocab, seed=2)
    reports = {}
    for label, alpha in (("as given", None), (f"lazy, alpha={args.alpha:g}", args.alpha)):
        rep = lazylab.diagnose(with_output(model, None), data, test_data=test, alpha=alpha,
                               loss="cross_entropy", lr=args.lr, steps=args.steps,
                               n_probe=args.probe, n_snapshots=5, progress=False)
        reports[label] = rep
        nb = rep.numbers
        print(f"{label:>18}: verdict {rep.verdict!r}; kernel change {nb['kernel_rel_change']:.3g}, "
              f"linearization gap {nb['lin_gap_rel']:.3g}, weight change "
              f"{nb['rel_weight_change']:.3g}, train loss {nb['train_loss_init']:.3g} -> "
              f"{nb['train_loss']:.3g}, kappa {nb['kappa']:.3g}")
    return reports


if __name__ == "__main__":
    main()
