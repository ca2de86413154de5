"""A small transformer encoder for width sweeps (coordinate checks, regime maps).

``TinyTransformer(d_in, width, ...)``: inputs ``(N, T, d_in)`` (a sequence of ``T`` vectors) ->
``Linear(d_in, width)`` embedding plus a learned positional embedding -> ``depth`` pre-norm
``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention`` with ``width // head_dim`` heads of
fixed size ``head_dim``, so the width grows through the number of heads; feed-forward ``4 width``;
dropout 0, so train and eval modes compute the same function) -> mean over positions ->
``Linear(width, out_dim)``. Output ``(N, out_dim)``, or ``(N,)`` when ``out_dim == 1``.

Cost: ``O(N T width (d_in + 12 width + T))`` per forward and block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TinyTransformer"]


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
