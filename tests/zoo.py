"""The model zoo of the conformance suite (tests/test_model_zoo.py) and of docs/your_model.md.

Each entry builds a tiny float64 model at random init and a batch of inputs. ``Entry`` fields:
``model``, ``x`` (a tensor, a tuple or a dict: see :mod:`lazylab.functional`), ``output_fn``,
``train_mode`` (the mode the model is used in: dropout active when True), ``continuous`` (the
inputs are one float tensor that an attack can perturb), ``slow`` (kept out of the default suite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

D = torch.float64
VOCAB, T = 7, 5


@dataclass
class Entry:
    model: nn.Module
    x: Any
    output_fn: Any = None
    train_mode: bool = False
    continuous: bool = True


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _feat(n: int, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=_g(1), dtype=D)


def _tokens(n: int) -> Tensor:
    return torch.randint(0, VOCAB, (n, T), generator=_g(2))


class ResBlockBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(h + self.bn2(self.c2(F.relu(self.bn1(self.c1(h))))))
        return self.head(h.mean((2, 3)))


class Encoder(nn.Module):
    """Linear embedding, nn.TransformerEncoder (dropout 0.1), mean pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))


class CausalDecoder(nn.Module):
    """Token + position embedding, one causal attention block written with
    F.scaled_dot_product_attention, MLP, LayerNorm; logits of the last position."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(VOCAB, d), nn.Parameter(0.1 * torch.randn(T, d))
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head, self.heads = nn.Linear(d, 3), heads

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids) + self.pos[: ids.shape[1]]
        n, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).reshape(n, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(n, t, d))
        h = h + self.mlp(self.ln2(h))
        return self.head(h[:, -1])


class Recurrent(nn.Module):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.rnn, self.head = cls(3, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.head(h[-1])


class EmbedPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(VOCAB, 6), nn.Linear(6, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.emb(ids).mean(1)))


class TiedLM(nn.Module):
    """Decoder weight tied to the embedding (as GPT-2's lm_head): next-token logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mix = nn.Embedding(VOCAB, 6), nn.Linear(6, 6)
        self.dec = nn.Linear(6, VOCAB, bias=False)
        self.dec.weight = self.emb.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.dec(torch.tanh(self.mix(self.emb(ids).mean(1))))


class TwoInput(nn.Module):
    """forward(x, mask): masked mean of per-position features."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.head = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(x.dtype).unsqueeze(-1)
        h = (torch.tanh(self.f(x)) * m).sum(1) / m.sum(1).clamp_min(1)
        return self.head(h)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.body(x))
        return {"features": h, "logits": self.head(h)}


class WithBuffers(nn.Module):
    """Constant buffers (input normalisation, a fixed projection), never written."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(4, generator=_g(3)))
        self.register_buffer("proj", torch.randn(4, 4, generator=_g(4)))
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) @ self.proj)


class CountingBuffer(nn.Module):
    """Writes a buffer in forward (a running mean that is not BatchNorm): refused."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("running", torch.zeros(4))
        self.always = always

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.always:
            self.running.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return self.lin(x - self.running)


def _hf_gpt2() -> Entry:
    import pytest

    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=8,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = _tokens(4)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0  # right padding
    return Entry(model, {"input_ids": ids, "attention_mask": mask},
                 output_fn=lambda out: out.logits[:, -1], continuous=False)


def _hf_bert() -> Entry:
    import pytest

    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, vocab_size=VOCAB, max_position_embeddings=8,
                                  num_labels=2, type_vocab_size=1)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = _tokens(4)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    return Entry(model, {"input_ids": ids, "attention_mask": mask}, output_fn="logits",
                 continuous=False)


def _bn_stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=_g(5))
            m.running_var.uniform_(0.5, 1.5, generator=_g(6))
    return model


N = 4
BUILDERS: dict[str, Callable[[], Entry]] = {
    "mlp": lambda: Entry(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), _feat(N, 4)),
    "cnn": lambda: Entry(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(2 * 16, 2)), _feat(N, 1, 6, 6)),
    "resnet_bn": lambda: Entry(_bn_stats(ResBlockBN()), _feat(N, 1, 5, 5), train_mode=True),
    "depthwise_conv": lambda: Entry(nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(2 * 25, 2)), _feat(N, 1, 5, 5)),
    "conv_transpose": lambda: Entry(nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.Tanh(), nn.ConvTranspose2d(2, 1, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(25, 2)), _feat(N, 1, 5, 5)),
    "max_pool": lambda: Entry(nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(2 * 9, 2)), _feat(N, 1, 6, 6)),
    "layer_norm": lambda: Entry(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(),
                                              nn.Linear(6, 2)), _feat(N, 4)),
    "group_norm": lambda: Entry(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Tanh(),
                                              nn.Flatten(), nn.Linear(4 * 9, 2)), _feat(N, 1, 5, 5)),
    "transformer_eval": lambda: Entry(Encoder().eval(), _feat(N, T, 3)),
    "transformer_train": lambda: Entry(Encoder().train(), _feat(N, T, 3), train_mode=True),
    "causal_decoder_sdpa": lambda: Entry(CausalDecoder(), _tokens(N), continuous=False),
    "lstm": lambda: Entry(Recurrent(nn.LSTM), _feat(N, T, 3)),
    "gru": lambda: Entry(Recurrent(nn.GRU), _feat(N, T, 3)),
    "embedding_pool": lambda: Entry(EmbedPool(), _tokens(N), continuous=False),
    "tied_embedding": lambda: Entry(TiedLM(), _tokens(N), continuous=False),
    "two_input": lambda: Entry(TwoInput(), (_feat(N, T, 3), (_tokens(N) > 1).long()),
                               continuous=False),
    "dict_output": lambda: Entry(DictOut(), _feat(N, 4)),
    "frozen_params": lambda: Entry(nn.Sequential(nn.Linear(4, 6).requires_grad_(False), nn.Tanh(),
                                                 nn.Linear(6, 2)), _feat(N, 4)),
    "buffers": lambda: Entry(WithBuffers(), _feat(N, 4)),
    "hf_gpt2": _hf_gpt2,
    "hf_bert": _hf_bert,
}


def build(name: str) -> Entry:
    """The entry ``name`` in float64 at a fixed random init (same numbers on every call)."""
    torch.manual_seed(0)
    e = BUILDERS[name]()
    e.model = e.model.to(D)
    e.model.train(e.train_mode)
    return e
