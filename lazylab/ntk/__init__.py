"""Empirical neural tangent kernels: ``ntk(model, x1, x2)`` with three algorithms.

- :mod:`lazylab.ntk.jacobian`: per-example Jacobians (torch.func), contracted per parameter.
- :mod:`lazylab.ntk.ntvp`: NTK-vector products (vjp then jvp), never materialising ``J``.
- :mod:`lazylab.ntk.structured`: per-layer rules ``(G G'^T) * (A A'^T)`` (Linear, Conv, Embedding,
  LayerNorm, BatchNorm, HF Conv1D), engine separate from the rules.
- :mod:`lazylab.ntk.approx`: approximate kernels (pseudo-NTK, random projections) with their error.
- :mod:`lazylab.ntk.api`: the entry point, cost model and tiling.
"""

import sys as _sys
import types as _types

from lazylab.ntk.api import METHODS, OUTPUTS, ntk

__all__ = ["ntk", "METHODS", "OUTPUTS"]


class _CallableModule(_types.ModuleType):
    """``lazylab.ntk`` is both this package and the function: ``lazylab.ntk(model, x1, x2)``."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return ntk(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
