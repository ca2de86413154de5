"""abc-parametrizations for any ``nn.Module``: standard, NTK, mean-field and muP.

Yang & Hu (2021, "Tensor Programs IV") write every weight as ``W = n^(-a) w`` with trainable
``w ~ N(0, sigma0^2 n^(-2b))`` and learning rate ``eta n^(-c)``, ``n`` the width. A layer's *role*
says which of its dimensions grow with the width:

* ``input``  — finite fan-in, infinite fan-out (first Linear/Conv, Embedding; also biases and
  norm gains of width ``n``, which are "vector-like");
* ``hidden`` — both infinite (hidden Linear/Conv, attention projections);
* ``output`` — infinite fan-in, finite fan-out (the read-out);
* ``finite`` — nothing grows (e.g. the read-out bias): no scaling.

Exponents ``(a, b, c_sgd, c_adam)`` by scheme and role (rows of :data:`ABC`):

==============  ===================  ====================  ====================
scheme          input                hidden                output
==============  ===================  ====================  ====================
``standard``    (0, 0, 0, 0)         (0, 1/2, 0, 0)        (0, 1/2, 0, 0)
``ntk``         (0, 0, 0, 1/2)       (1/2, 0, 0, 1)        (1/2, 0, 0, 1/2)
``mean_field``  (0, 0, -1, 0)        (1/2, 0, -1, 1/2)     (1, 0, -1, 0)
``mup``         (0, 0, -1, 0)        (0, 1/2, 0, 1)        (1/2, 1/2, 0, 1/2)
==============  ===================  ====================  ====================

Under SGD a layer's dynamics are unchanged by ``(a, b, c) -> (a + t, b - t, c - 2t)`` (Adam:
``c - t``), so ``mean_field`` and ``mup`` are the same dynamics written differently (a test checks
it). The table picks the representative with the input multiplier 1. ``fold_lr="sgd"|"adam"``
applies that symmetry with ``t = c/2`` (``t = c``) so that every lr exponent is 0: the model then
trains with one global learning rate (e.g. in :func:`lazylab.train`, which has one).

Width-relative constants (as in the ``mup`` package): ``r = n / n_base`` per layer, multiplier
``r^(-a)``, init std ``sigma0 r^(-b)`` with ``sigma0 = gain / sqrt(base fan-in)`` (``gain`` for an
Embedding, whose input is one-hot), lr ``eta r^(-c)``. At the base width every scheme is the
standard parametrization with std ``gain / sqrt(fan_in)``, so learning rates tuned there carry over.

``n`` and ``n_base`` are read from the modules: with ``base=`` (the same architecture at another
width) the dimensions whose sizes differ are the infinite ones and decide the role (the ``mup``
package's base shapes); with ``base_width=`` roles follow module order (first weight layer or any
Embedding = input, last = output, the rest hidden) and ``n`` is the infinite fan (fan-out of an
input layer, fan-in otherwise). ``roles={param_name: role}`` overrides either.

Limitations: ``nn.MultiheadAttention`` keeps its ``1/sqrt(head_dim)`` logit scale (muP's ``1/head_dim``
only matters when the head dimension grows; grow the number of heads instead); separate
``q/k/v_proj_weight`` (kdim != embed_dim) are refused. Multipliers are applied with
:func:`torch.nn.utils.parametrize.register_parametrization`, so a scaled weight's trainable tensor
is ``<module>.parametrizations.<name>.original``. Cost: one pass over the parameters.
"""

from __future__ import annotations

import math
import sys as _sys
import types as _types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize as P

__all__ = ["SCHEMES", "ROLES", "ABC", "LayerScaling", "Parametrization", "parametrize",
           "param_groups", "get_parametrization", "make_optimizer"]

SCHEMES = ("standard", "ntk", "mean_field", "mup")
ROLES = ("input", "hidden", "output", "finite")
ABC: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "standard": {"input": (0, 0, 0, 0), "hidden": (0, .5, 0, 0), "output": (0, .5, 0, 0)},
    "ntk": {"input": (0, 0, 0, .5), "hidden": (.5, 0, 0, 1), "output": (.5, 0, 0, .5)},
    "mean_field": {"input": (0, 0, -1, 0), "hidden": (.5, 0, -1, .5), "output": (1, 0, -1, 0)},
    "mup": {"input": (0, 0, -1, 0), "hidden": (0, .5, 0, 1), "output": (.5, .5, 0, .5)},
}
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm)
_ATTR = "_lazylab_parametrization"


@dataclass(frozen=True)
class LayerScaling:
    """The scaling of one parameter tensor. ``name``: its name before re-parametrization;
    ``module``/``attr``: owner module name and attribute; ``fan_in``/``fan_out`` as read from the
    tensor; ``width`` ``n`` and ``ratio`` ``r = n / n_base``; ``a, b, c_sgd, c_adam`` exponents;
    ``multiplier`` ``r^-a``; ``init_std`` (None: init kept, e.g. biases and norm gains);
    ``lr_sgd`` ``r^-c_sgd`` and ``lr_adam`` ``r^-c_adam`` (learning-rate multipliers)."""

    name: str
    module: str
    attr: str
    kind: str
    role: str
    fan_in: int
    fan_out: int
    width: int
    ratio: float
    a: float
    b: float
    c_sgd: float
    c_adam: float
    multiplier: float
    init_std: float | None
    lr_sgd: float
    lr_adam: float


@dataclass
class Parametrization:
    """What :func:`parametrize` did: the scheme and one :class:`LayerScaling` per parameter."""

    scheme: str
    layers: list[LayerScaling]
    fold_lr: str | None = None

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([vars(s) for s in self.layers])

    def by_name(self) -> dict[str, LayerScaling]:
        return {s.name: s for s in self.layers}


class _Multiplier(nn.Module):
    """``w -> c * w`` (the forward multiplier ``n^-a``)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.c

    def extra_repr(self) -> str:
        return f"c={self.c:.4g}"


def _fans(mod: nn.Module, attr: str, t: Tensor) -> tuple[int, int, str]:
    """(fan_in, fan_out, kind) of parameter ``attr`` of ``mod``."""
    if t.dim() == 1:
        return 1, t.shape[0], "vector"
    if isinstance(mod, nn.Embedding):
        return t.shape[0], t.shape[1], "embedding"
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return t.shape[1] * math.prod(t.shape[2:]), t.shape[0], "conv"
    return t.shape[1], t.shape[0], "matrix"


def _owned(model: nn.Module) -> list[tuple[str, nn.Module, str, Tensor]]:
    """Every (module name, module, attribute, tensor) for the trainable parameters, refusing
    modules this file does not know (error names the layer)."""
    out = []
    for mname, mod in model.named_modules():
        own = [(k, v) for k, v in mod._parameters.items() if v is not None]
        if P.is_parametrized(mod):
            raise ValueError(f"layer {mname or '<root>'} ({type(mod).__name__}) is already "
                             "parametrized; call parametrize() on a fresh model")
        if not own:
            continue
        if not isinstance(mod, _WEIGHTED + _NORMS):
            raise ValueError(f"parametrize: unsupported layer {mname or '<root>'} "
                             f"({type(mod).__name__}) holds parameters "
                             f"{[k for k, _ in own]}; supported: Linear, Conv1d/2d/3d, Embedding, "
                             "MultiheadAttention, LayerNorm/GroupNorm/BatchNorm/RMSNorm")
        if isinstance(mod, nn.MultiheadAttention) and not mod._qkv_same_embed_dim:
            raise ValueError(f"parametrize: layer {mname} (MultiheadAttention) has kdim/vdim != "
                             "embed_dim (separate q/k/v projections); not supported")
        out += [(mname, mod, k, v) for k, v in own if v.requires_grad]
    return out


def _roles_from_base(items: list, base: nn.Module, delta: nn.Module | None
                     ) -> dict[str, tuple[str, int, int]]:
    """name -> (role, n, n_base): ``n_base`` from ``base``; infinite dimensions are those whose size
    differs between ``delta`` and ``base`` (``delta`` None: between the model and ``base``)."""
    bshapes = {n: p.shape for n, p in base.named_parameters()}
    dshapes = {n: p.shape for n, p in delta.named_parameters()} if delta is not None else None
    out = {}
    for mname, mod, attr, t in items:
        name = f"{mname}.{attr}" if mname else attr
        if name not in bshapes or len(bshapes[name]) != t.dim():
            raise ValueError(f"base model has no parameter {name!r} of dimension {t.dim()}; "
                             "base must be the same architecture at another width")
        fi, fo, _ = _fans(mod, attr, t)
        bfi, bfo, _ = _fans(mod, attr, torch.empty(bshapes[name], device="meta"))
        if dshapes is None:
            inf_in, inf_out = fi != bfi, fo != bfo
        else:
            if name not in dshapes or len(dshapes[name]) != t.dim():
                raise ValueError(f"delta model has no parameter {name!r} of dimension {t.dim()}")
            dfi, dfo, _ = _fans(mod, attr, torch.empty(dshapes[name], device="meta"))
            inf_in, inf_out = dfi != bfi, dfo != bfo
        role = {(False, True): "input", (True, True): "hidden", (True, False): "output",
                (False, False): "finite"}[(inf_in, inf_out)]
        n, nb = {"input": (fo, bfo), "hidden": (fi, bfi), "output": (fi, bfi),
                 "finite": (1, 1)}[role]
        out[name] = (role, n, nb)
    return out


def _roles_by_order(items: list, base_width: int) -> dict[str, tuple[str, int, int]]:
    """name -> (role, n, n_base): first weight layer input, last output, the rest hidden."""
    mats = [mname for mname, mod, attr, t in items if t.dim() >= 2]
    first, last = (mats[0], mats[-1]) if mats else (None, None)
    out = {}
    for mname, mod, attr, t in items:
        name = f"{mname}.{attr}" if mname else attr
        fi, fo, kind = _fans(mod, attr, t)
        if kind == "vector":
            role = "finite" if mname == last else "input"
        elif kind == "embedding" or mname == first:
            role = "input"
        else:
            role = "output" if mname == last else "hidden"
        n = {"input": fo, "hidden": fi, "output": fi, "finite": 1}[role]
        out[name] = (role, n, base_width if role != "finite" else 1)
    return out


def _fold(a: float, b: float, c_sgd: float, c_adam: float, fold_lr: str | None
          ) -> tuple[float, float, float, float]:
    if fold_lr == "sgd":  # (a + t, b - t, c - 2t) with t = c/2
        return a + c_sgd / 2, b - c_sgd / 2, 0.0, c_adam - c_sgd / 2
    if fold_lr == "adam":  # (a + t, b - t, c - t) with t = c
        return a + c_adam, b - c_adam, c_sgd - 2 * c_adam, 0.0
    return a, b, c_sgd, c_adam


def _scaling(name: str, mname: str, mod: nn.Module, attr: str, t: Tensor, role: str, n: int,
             nb: int, scheme: str, gain: float, fold_lr: str | None) -> LayerScaling:
    fi, fo, kind = _fans(mod, attr, t)
    a, b, cs, ca = ABC[scheme][role] if role != "finite" else (0.0, 0.0, 0.0, 0.0)
    a, b, cs, ca = _fold(a, b, cs, ca, fold_lr)
    r = n / nb
    std: float | None = None
    if kind != "vector":
        base_fan_in = fi / r if role in ("hidden", "output") else fi
        sigma0 = gain if kind == "embedding" else gain / math.sqrt(base_fan_in)
        std = sigma0 * r ** (-b)
    return LayerScaling(name, mname, attr, kind, role, fi, fo, n, r, a, b, cs, ca, r ** (-a), std,
                        r ** (-cs), r ** (-ca))


def parametrize(
    model: nn.Module, scheme: str, *, base: nn.Module | None = None,
    delta: nn.Module | None = None, base_width: int | None = None,
    gain: float = 1.0, roles: dict[str, str] | None = None, fold_lr: str | None = None,
    init: bool = True, zero_output: bool = False, generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-parametrize ``model`` in place as ``scheme`` (one of :data:`SCHEMES`) and return it.

    Each trainable weight matrix/kernel is re-drawn as ``N(0, init_std^2)`` (``init=True``; biases
    and norm parameters keep their init) and, when its multiplier ``r^-a`` is not 1, gets it as a
    parametrization. ``base`` or ``base_width`` fixes ``n_base`` (see the module docstring);
    ``delta`` (with ``base``; the model at a third width) tells the infinite dimensions when the
    model may have the base width itself (the ``mup`` package's base/delta shapes);
    ``gain`` the base-width std ``gain / sqrt(fan_in)``; ``roles`` overrides roles by parameter
    name; ``fold_lr`` in ``{None, "sgd", "adam"}`` folds the lr exponents into ``a, b`` (one global
    lr); ``zero_output`` starts output-role weights at 0 (muP's recommended read-out init: the
    initial output ``O(n^-1/2)`` then does not bias comparisons across widths).
    The plan is kept on the model (:func:`get_parametrization`); :func:`param_groups` reads it.

    Raises ValueError naming the layer for unsupported layers, and for a bad ``scheme``, role or
    missing ``base``/``base_width``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if fold_lr not in (None, "sgd", "adam"):
        raise ValueError(f"fold_lr must be None, 'sgd' or 'adam', got {fold_lr!r}")
    if (base is None) == (base_width is None):
        raise ValueError("give exactly one of base= (the model at another width) or base_width=")
    if delta is not None and base is None:
        raise ValueError("delta= needs base=")
    if base_width is not None and (not isinstance(base_width, int) or base_width < 1):
        raise ValueError(f"base_width must be a positive int, got {base_width!r}")
    items = _owned(model)
    plan = _roles_from_base(items, base, delta) if base is not None else _roles_by_order(items, base_width)
    for k, role in (roles or {}).items():
        if k not in plan or role not in ROLES:
            raise ValueError(f"roles: {k!r} -> {role!r}: name must be a parameter of the model "
                             f"and role one of {ROLES}")
        _, n, nb = plan[k]
        plan[k] = (role, n, nb)
    layers = []
    for mname, mod, attr, t in items:
        name = f"{mname}.{attr}" if mname else attr
        s = _scaling(name, mname, mod, attr, t, *plan[name], scheme, gain, fold_lr)
        if init:
            with torch.no_grad():
                if s.init_std is not None and zero_output and s.role == "output":
                    t.zero_()
                elif s.init_std is not None:
                    t.normal_(0.0, s.init_std, generator=generator)
                else:  # vector-like: keep the effective init (multiplier * raw)
                    t.div_(s.multiplier)
        layers.append(s)
    for s in layers:
        if s.multiplier != 1.0:
            P.register_parametrization(model.get_submodule(s.module), s.attr, _Multiplier(s.multiplier))
    setattr(model, _ATTR, Parametrization(scheme, layers, fold_lr))
    return model


def get_parametrization(model: nn.Module) -> Parametrization:
    """The :class:`Parametrization` set by :func:`parametrize` (ValueError if none)."""
    p = getattr(model, _ATTR, None)
    if p is None:
        raise ValueError("model was not parametrized: call lazylab.parametrize(model, scheme, ...)")
    return p


def _tensor(model: nn.Module, s: LayerScaling) -> Tensor:
    mod = model.get_submodule(s.module)
    if P.is_parametrized(mod, s.attr):
        return mod.parametrizations[s.attr].original
    return getattr(mod, s.attr)


def param_groups(model: nn.Module, lr: float, optimizer: str = "sgd") -> list[dict[str, Any]]:
    """Optimizer parameter groups: one per parameter with ``lr = lr * r^-c`` (``c`` the SGD or
    Adam exponent), also stored as ``lr_mult``; ``name`` and ``role`` for reference."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    groups = []
    for s in get_parametrization(model).layers:
        mult = s.lr_sgd if optimizer == "sgd" else s.lr_adam
        groups.append({"params": [_tensor(model, s)], "lr": lr * mult, "lr_mult": mult,
                       "name": s.name, "role": s.role})
    return groups


def make_optimizer(model: nn.Module, lr: float, optimizer: str = "sgd", **kwargs: Any
                   ) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` or ``Adam`` over :func:`param_groups` (``kwargs`` to the optimizer)."""
    groups = param_groups(model, lr, optimizer)
    cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    return cls(groups, lr=lr, **kwargs)



class _CallableModule(_types.ModuleType):
    """``lazylab.parametrize`` is both this module and the function (the package attribute becomes the
    module once it is imported, so the module forwards calls to the function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return parametrize(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
