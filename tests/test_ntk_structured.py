"""Structured NTK layer rules (lazylab.ntk.structured) vs a naive float64 per-example-gradient loop.

Every rule (Linear on sequences, Embedding on integer tokens, LayerNorm, Hugging Face Conv1D, and
a full tiny GPT-2) and every fallback (unsupported layers, parameters used outside their module)
must give the exact kernel: relative error < 1e-10 in float64, all three output modes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lazylab.ntk import ntk
from lazylab.ntk.problem import build_problem
from lazylab.ntk.structured import StructuredEngine, clear_plans
from lazylab.ntk.structured import engine as st_engine
from lazylab.transformer import CausalDecoder

F64 = torch.float64


def naive_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, output: str) -> torch.Tensor:
    """K[n, m, a, b] = sum_p df_a(x1_n)/dp df_b(x2_m)/dp, one autograd call per example and output."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i:i + 1]).reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[a], params,
                                                                     retain_graph=True)])
                for a in range(out.shape[0])]))
        return torch.stack(rows)  # (N, O, P)

    j1, j2 = jac(x1), jac(x2)
    full = torch.einsum("nap,mbp->nmab", j1, j2)
    if output == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return diag if output == "diagonal" else diag.sum(-1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _check(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, outputs=("trace", "full",
           "diagonal")) -> StructuredEngine:
    model = model.double().eval()
    for output in outputs:
        ref = naive_ntk(model, x1, x2, output)
        for method in ("structured", "auto"):
            k = ntk(model, x1, x2, method=method, output=output)
            assert _rel(k, ref) < 1e-10, (method, output)
        ks = ntk(model, x1, method="structured", output=output)  # symmetric path
        assert _rel(ks, naive_ntk(model, x1, x1, output)) < 1e-10
    pb = build_problem(model)
    with pb.eval_mode():
        return StructuredEngine(pb, "trace", None, x1[:2], x1.shape[0])


def _kinds(st: StructuredEngine) -> set[str]:
    return {g.rule.__name__.rsplit(".", 1)[-1] for g in st.groups}


# ---- models --------------------------------------------------------------------------------

def Decoder(pad: int | None = None) -> nn.Module:
    """One causal block, MLP ratio 2, 11 tokens, 16 positions, 3 outputs."""
    return CausalDecoder(11, 8, layers=1, heads=2, max_len=16, out=3, mlp_ratio=2, padding_idx=pad)


class BagOfTokens(nn.Module):
    def __init__(self, vocab: int = 7, d: int = 5, out: int = 2, **kw) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, **kw)
        self.out = nn.Linear(d, out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids)).mean(1))


def _tokens(n: int, t: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


# ---- rules ---------------------------------------------------------------------------------

def test_embedding_on_integer_tokens_is_exact():
    torch.manual_seed(0)
    x1, x2 = _tokens(6, 5, 7, 1), _tokens(4, 5, 7, 2)
    x2[0] = x1[0]  # repeated sequences and tokens
    st = _check(BagOfTokens(), x1, x2)
    assert _kinds(st) == {"embedding", "linear"} and not st.rest


@pytest.mark.parametrize("vocab,explicit", [(7, True), (1000, False)])
def test_embedding_gram_and_explicit_forms(vocab, explicit):
    """Small table: dense per-example gradients; large vocabulary: the token-match Gram form."""
    torch.manual_seed(11)
    x1, x2 = _tokens(5, 6, vocab, 15), _tokens(4, 6, vocab, 16)
    x2[1, 2] = x1[0, 0]  # a shared token at different positions
    st = _check(BagOfTokens(vocab=vocab, d=4), x1, x2)
    (emb,) = [g for g in st.groups if g.key == "emb.weight"]
    assert emb.explicit is explicit


def test_embedding_padding_idx_gets_no_gradient():
    torch.manual_seed(1)
    x1, x2 = _tokens(5, 6, 7, 3), _tokens(3, 6, 7, 4)
    x1[:, :2] = 0
    x2[0, 0] = 0
    for vocab in (7, 1000):  # both forms mask the padding token
        st = _check(BagOfTokens(vocab=vocab, padding_idx=0), x1, x2, outputs=("trace",))
        assert "embedding" in _kinds(st)


def test_unsupported_embedding_falls_back_exactly():
    """scale_grad_by_freq makes the gradient depend on the batch: no rule, Jacobian path."""
    torch.manual_seed(2)
    st = _check(BagOfTokens(scale_grad_by_freq=True), _tokens(5, 4, 7, 5), _tokens(3, 4, 7, 6),
                outputs=("trace",))
    assert _kinds(st) == {"linear"} and st.rest == ["emb.weight"]


def test_decoder_transformer_with_sdpa_is_exact_and_fully_covered():
    torch.manual_seed(3)
    x1, x2 = _tokens(5, 6, 11, 7), _tokens(3, 6, 11, 8)
    st = _check(Decoder(pad=0), x1, x2)
    assert _kinds(st) == {"embedding", "linear", "layernorm"}
    assert not st.rest  # the broadcast position embedding is covered too


def test_layernorm_without_bias_and_linear_on_3d_inputs():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6, bias=False), nn.Tanh(), nn.Linear(6, 2),
                          nn.Flatten())
    x1 = torch.randn(5, 4, 3, dtype=F64)
    st = _check(model, x1, torch.randn(3, 4, 3, dtype=F64))
    assert _kinds(st) == {"linear", "layernorm"} and not st.rest


def test_hf_conv1d_is_a_transposed_linear():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(5)
    model = nn.Sequential(Conv1D(7, 3), nn.Tanh(), Conv1D(2, 7), nn.Flatten())
    st = _check(model, torch.randn(5, 4, 3, dtype=F64), torch.randn(3, 4, 3, dtype=F64))
    assert _kinds(st) == {"hf_conv1d"} and not st.rest


def test_tiny_gpt2_is_exact_and_fully_covered():
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2Model

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = GPT2Config(vocab_size=13, n_embd=8, n_layer=2, n_head=2, n_positions=16,
                             use_cache=False, bos_token_id=0, eos_token_id=0)
            self.gpt, self.head = GPT2Model(cfg), nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.gpt(input_ids=ids, use_cache=False).last_hidden_state[:, -1])

    torch.manual_seed(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap over fused attention: performance warnings
        st = _check(Head(), _tokens(4, 5, 13, 9), _tokens(3, 5, 13, 10), outputs=("trace", "full"))
    assert _kinds(st) == {"embedding", "hf_conv1d", "layernorm", "linear"} and not st.rest


def test_unsupported_layers_use_an_exact_path():
    """nn.MultiheadAttention uses its weights functionally (out_proj's forward is never called),
    nn.Bilinear has no rule: both go to the Jacobian path, never a wrong number."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(9, 6)
            self.mha = nn.MultiheadAttention(6, 2, batch_first=True)
            self.bil = nn.Bilinear(6, 6, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            a, _ = self.mha(h, h, h, need_weights=False)
            p = a.mean(1)
            return self.out(torch.tanh(self.bil(p, h[:, 0])))

    torch.manual_seed(7)
    st = _check(Model(), _tokens(5, 4, 9, 11), _tokens(3, 4, 9, 12))
    assert {"emb.weight", "out.weight"} <= {n for g in st.groups for n in g.names}
    assert {"mha.in_proj_weight", "mha.out_proj.weight", "bil.weight"} <= set(st.rest)


def test_parameter_used_outside_its_module_is_caught_per_example():
    """A Linear whose weight also enters the output directly fails the check (with a warning)."""

    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + (x[:, :3] * self.lin.weight[:, 0]).pow(2)

    clear_plans()
    torch.manual_seed(8)
    with pytest.warns(RuntimeWarning, match="lin.weight"):
        st = _check(Leaky(), torch.randn(5, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    assert "lin.weight" in st.rest


def test_batch_not_on_axis_0_is_caught_even_when_sizes_coincide():
    """A sequence-first Linear on (T=2, N=2, d): sizes match the 2-example probe, the per-example
    weighted check still sees the mixing."""

    class SeqFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(3, 4), nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 2, 3)
            h = torch.tanh(self.lin(x.transpose(0, 1)))  # (2, N, 4): batch on axis 1
            return self.out(h.sum(0))

    clear_plans()
    torch.manual_seed(9)
    x = torch.randn(2, 2, 3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = SeqFirst().double()
        k = ntk(model, x, method="structured")
    assert _rel(k, naive_ntk(model, x, x, "trace")) < 1e-10


def test_rules_are_verified_once_per_structure(monkeypatch):
    calls = []
    orig = StructuredEngine._verified

    def counting(self, groups, probe):
        calls.append(tuple(probe.shape))
        return orig(self, groups, probe)

    monkeypatch.setattr(StructuredEngine, "_verified", counting)
    clear_plans()
    torch.manual_seed(10)
    model = BagOfTokens().double()
    x = _tokens(6, 5, 7, 13)
    k1 = ntk(model, x, method="structured")
    k2 = ntk(model, x, method="structured")
    assert len(calls) == 1 and torch.equal(k1, k2)
    ntk(model, _tokens(6, 9, 7, 14), method="structured")  # another sequence length: re-verified
    assert len(calls) == 2
    ntk(BagOfTokens().double(), x, method="structured")  # another instance: verified on its own
    assert len(calls) == 3
    assert len(st_engine._PLANS) >= 1
