"""Structured NTK: per-layer rules from input activations ``A`` and output cotangents ``G``.

The engine (:mod:`.engine`: capture, one-time verification, contraction) is separate from the
layer rules, one file per layer type (as BackPACK's ``core/derivatives/<layer>.py``):

- :mod:`.linear`: ``nn.Linear`` on ``(N, d)`` or ``(N, ..., d)`` (sequence positions);
- :mod:`.conv`: ``nn.Conv1d`` / ``nn.Conv2d`` through the unfolded (im2col) form;
- :mod:`.hf_conv1d`: Hugging Face ``Conv1D`` (GPT-2), a Linear with the weight transposed;
- :mod:`.embedding`: ``nn.Embedding``, a gather: token-match Gram, no one-hot, no ``V``;
- :mod:`.layernorm`: ``nn.LayerNorm`` affine weights, explicit per-example gradients;
- :mod:`.batchnorm`: ``nn.BatchNorm1d/2d`` with running statistics (eval mode), the same way.

A rule module provides ``KIND`` (``"matmul"``, ``"gather"``, ``"elementwise"``), ``supports``,
``rows_in``/``rows_out`` (the recorded input and cotangent in rows), ``dims``, ``input_gram``
(or None), ``per_example`` (or None), ``grad_of_sum`` and ``weight_shape`` (for the check).
"""

from lazylab.ntk.structured.engine import (
    RULES,
    Group,
    StructuredEngine,
    capture,
    clear_plans,
    explicit_cost,
    gram_block,
    gram_cost,
    rule_for,
)

__all__ = ["RULES", "Group", "StructuredEngine", "capture", "clear_plans", "explicit_cost",
           "gram_block", "gram_cost", "rule_for"]
