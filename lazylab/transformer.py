"""Small transformers: an encoder for width sweeps (coordinate checks, regime maps) and a
decoder-only model on token ids (NTK benchmarks and tests).

``TinyTransformer(d_in, width, ...)``: inputs ``(N, T, d_in)`` (a sequence of ``T`` vectors) ->
``Linear(d_in, width)`` embedding plus a learned positional embedding -> ``depth`` pre-norm
``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention`` with ``width // head_dim`` heads of
fixed size ``head_dim``, so the width grows through the number of heads; feed-forward ``4 width``;
dropout 0, so train and eval modes compute the same function) -> mean over positions ->
``Linear(width, out_dim)``. Output ``(N, out_dim)``, or ``(N,)`` when ``out_dim == 1``.

Cost: ``O(N T width (d_in + 12 width + T))`` per forward and block.

``CausalDecoder(vocab, d, ...)``: token ids ``(N, T)`` -> token embedding + position embedding
(called on a batch of one, broadcast over the batch, as GPT-2 does) -> ``layers`` pre-LayerNorm
blocks (causal self-attention by ``F.scaled_dot_product_attention`` with separate ``q, k, v, o``
Linears, then an MLP ``d -> mlp_ratio d -> d`` with GELU) -> LayerNorm of the last position ->
``Linear(d, out)``. Output ``(N, out)``. Cost per block: ``O(N T d (4 d + 2 mlp_ratio d + T))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TinyTransformer", "CausalBlock", "CausalDecoder"]


class TinyTransformer(nn.Module):
    """See the module docstring. Layers: ``embed``, ``pos`` (1, T, width), ``encoder`` and ``out``."""

    def __init__(self, d_in: int, width: int, *, seq_len: int = 8, depth: int = 2,
                 head_dim: int = 16, out_dim: int = 1) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("width", width), ("seq_len", seq_len), ("depth", depth),
                        ("head_dim", head_dim), ("out_dim", out_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if width % head_dim:
            raise ValueError(f"width ({width}) must be a multiple of head_dim ({head_dim})")
        self.seq_len, self.d_in, self.out_dim = seq_len, d_in, out_dim
        self.embed = nn.Linear(d_in, width)
        self.pos = nn.Embedding(seq_len, width)
        layer = nn.TransformerEncoderLayer(width, width // head_dim, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, self.d_in):
            raise ValueError(f"TinyTransformer: x must have shape (N, {self.seq_len}, {self.d_in}), "
                             f"got {tuple(x.shape)}")
        pos = self.pos(torch.arange(self.seq_len, device=x.device))
        h = self.encoder(self.embed(x) + pos)
        out = self.out(h.mean(1))
        return out[:, 0] if self.out_dim == 1 else out


class CausalBlock(nn.Module):
    """Pre-LayerNorm causal self-attention block + MLP on ``(N, T, d)`` (see the module docstring)."""

    def __init__(self, d: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d ({d}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, mlp_ratio * d), nn.Linear(mlp_ratio * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).reshape(b, t, self.heads, -1).transpose(1, 2)
                   for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CausalDecoder(nn.Module):
    """Decoder-only transformer on token ids ``(N, T)`` -> ``(N, out)`` (see the module docstring).
    Layers: ``tok``, ``pos`` (``max_len`` positions), ``blocks``, ``ln``, ``head``."""

    def __init__(self, vocab: int, d: int, *, layers: int = 1, heads: int = 2, max_len: int = 64,
                 out: int = 1, mlp_ratio: int = 4, padding_idx: int | None = None) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(CausalBlock(d, heads, mlp_ratio) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, out)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.shape[1] > self.pos.num_embeddings:
            raise ValueError(f"CausalDecoder: ids must have shape (N, T) with T <= "
                             f"{self.pos.num_embeddings}, got {tuple(ids.shape)}")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos[None])  # a batch-1 call broadcast over the batch
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x[:, -1]))
