"""CausalDecoder against a naive float64 re-implementation (explicit masked softmax per head)."""

from __future__ import annotations

import math

import pytest
import torch

from lazylab.transformer import CausalDecoder


def _naive(model: CausalDecoder, ids: torch.Tensor) -> torch.Tensor:
    n, t = ids.shape
    x = model.tok.weight[ids] + model.pos.weight[:t][None]
    for blk in model.blocks:
        h = torch.nn.functional.layer_norm(x, x.shape[-1:], blk.ln1.weight, blk.ln1.bias)
        d, heads = x.shape[-1], blk.heads
        dh = d // heads
        q, k, v = (m(h).reshape(n, t, heads, dh) for m in (blk.q, blk.k, blk.v))
        out = torch.zeros_like(q)
        for a in range(t):  # position a attends to positions 0..a
            s = torch.einsum("nhd,nbhd->nhb", q[:, a], k[:, : a + 1]) / math.sqrt(dh)
            out[:, a] = torch.einsum("nhb,nbhd->nhd", s.softmax(-1), v[:, : a + 1])
        x = x + blk.o(out.reshape(n, t, d))
        h2 = torch.nn.functional.layer_norm(x, x.shape[-1:], blk.ln2.weight, blk.ln2.bias)
        x = x + blk.fc2(torch.nn.functional.gelu(blk.fc1(h2)))
    last = torch.nn.functional.layer_norm(x[:, -1], x.shape[-1:], model.ln.weight, model.ln.bias)
    return model.head(last)


def test_decoder_equals_naive_causal_attention():
    torch.manual_seed(0)
    model = CausalDecoder(13, 8, layers=2, heads=2, max_len=10, out=3).double()
    ids = torch.randint(0, 13, (4, 7))
    torch.testing.assert_close(model(ids), _naive(model, ids), rtol=1e-10, atol=1e-12)


def test_decoder_is_causal_and_checks_its_input():
    torch.manual_seed(1)
    model = CausalDecoder(13, 8, max_len=10).double()
    ids = torch.randint(0, 13, (3, 6))
    with torch.no_grad():
        full = model.blocks[0](model.tok(ids) + model.pos.weight[:6])
        prefix = model.blocks[0](model.tok(ids[:, :4]) + model.pos.weight[:4])
    torch.testing.assert_close(full[:, :4], prefix)  # later tokens never change earlier positions
    with pytest.raises(ValueError, match="T <= 10"):
        model(torch.zeros(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of heads"):
        CausalDecoder(13, 9, heads=2)
