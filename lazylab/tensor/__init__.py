"""Over-parameterized symmetric tensor decomposition: lazy (NTK) fit vs beyond-lazy training.

Reproduces the claims of Wang, Wu, Lee, Ma & Ge (2020), "Beyond Lazy Training for
Over-parameterized Tensor Decomposition" (NeurIPS): fitting ``T* = sum_k c*_k u*_k^{(x)l}`` with
``T(u, c) = sum_{i<=m} c_i u_i^{(x)l}`` needs ``m >= dim Sym^l(R^d) / d ~ d^{l-1}`` components
in the lazy regime, while a gradient-descent variant works with m independent of d
(up to log factors).

Modules:
    symmetric  SymCP (CP-form symmetric tensors, inner products), dim_sym, random_ground_truth
    model      TensorModel (nn.Module; standard or 2-homogeneous parametrization), coordinate_probes
    tangent    tangent-space Gram matrix, matrix-free products, exact least squares (lazy fit)
    fit        fit_lazy, fit_gd, fit_variant (our "beyond lazy" variant; see its docstring)
"""

from lazylab.tensor.fit import FitResult, fit_gd, fit_lazy, fit_variant, relative_error
from lazylab.tensor.model import PARAMETRIZATIONS, TensorModel, coordinate_probes
from lazylab.tensor.symmetric import SymCP, cp_inner, dim_sym, random_ground_truth, symmetrize
from lazylab.tensor.tangent import (
    tangent_gram,
    tangent_lstsq,
    tangent_matvec,
    tangent_residual,
    tangent_rhs,
)

__all__ = [
    "FitResult", "PARAMETRIZATIONS", "SymCP", "TensorModel", "coordinate_probes", "cp_inner",
    "dim_sym", "fit_gd", "fit_lazy", "fit_variant", "random_ground_truth", "relative_error",
    "symmetrize", "tangent_gram", "tangent_lstsq", "tangent_matvec", "tangent_residual",
    "tangent_rhs",
]
