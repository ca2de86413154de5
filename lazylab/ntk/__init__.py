"""Empirical neural tangent kernels: ``ntk(model, x1, x2)`` with three algorithms.

- :mod:`lazylab.ntk.jacobian`: per-example Jacobians (torch.func), contracted per parameter.
- :mod:`lazylab.ntk.ntvp`: NTK-vector products (vjp then jvp), never materialising ``J``.
- :mod:`lazylab.ntk.structured`: per-layer rules ``(G G'^T) * (A A'^T)`` for Linear/Conv layers.
- :mod:`lazylab.ntk.api`: the entry point, cost model and tiling.
"""

from lazylab.ntk.api import METHODS, OUTPUTS, ntk

__all__ = ["ntk", "METHODS", "OUTPUTS"]
