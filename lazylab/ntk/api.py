"""``ntk()``: argument checks, method choice (cost model), tiling with symmetry, progress.

Inputs: ``x1``/``x2`` are tensors of any dtype (token ids stay integers) or tuples/dicts of
batched tensors (the model is called as ``model(*x)`` / ``model(**x)``), see
:mod:`lazylab.functional`. Recurrent layers are handled exactly (per-example loop instead of
``vmap``); forward-mode products fall back to the double-VJP identity where torch has none.

``"auto"`` takes the cheaper of jacobian and structured by a cost model (see ``_costs``);
``ntvp`` only when one example's Jacobian does not fit the 1 GiB budget.

Policies: the model is evaluated in eval mode (BatchNorm uses running statistics, dropout is
off; training flags are restored afterwards). BatchNorm with ``track_running_stats=False``
couples the examples of a batch and is refused. Weight sharing is exact: a module called
several times contributes all cross terms (``functional_call`` ties shared parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.checks import check_finite_tensors
from lazylab.ntk.jacobian import OUTPUTS, JacobianEngine
from lazylab.ntk.ntvp import NTVPEngine
from lazylab.ntk.problem import Problem, build_problem
from lazylab.ntk.structured import StructuredEngine

METHODS = ("auto", "jacobian", "ntvp", "structured")
MEMORY_BUDGET = 1 << 30  # bytes of per-tile features the default tiling aims for


def _check_x(x: object, arg: str) -> fn.Inputs:
    """A tensor (any dtype) or a tuple/dict of batched tensors (:mod:`lazylab.functional`)."""
    return fn.check_inputs(x, arg)


def _shape(x: fn.Inputs) -> object:
    if isinstance(x, Tensor):
        return tuple(x.shape)
    if isinstance(x, dict):
        return {k: tuple(v.shape) for k, v in x.items()}
    return tuple(tuple(v.shape) for v in x)


def _probe(problem: Problem, x: fn.Inputs, arg: str) -> int:
    """Run the model on two examples of ``x``; return the output dim or raise a ValueError."""
    head = fn.take(x, slice(0, 2))
    try:
        with torch.no_grad():
            out = problem.f(problem.params, head)
    except Exception as err:  # the model's own error, re-raised with the argument named
        raise ValueError(
            f"{arg} of shape {_shape(x)} is incompatible with the model: "
            f"{type(err).__name__}: {err}") from err
    if out.shape[0] != fn.batch_size(head):
        raise ValueError(f"the model maps {arg}[:2] to {out.shape[0]} outputs rows; the NTK needs "
                         "one output row per example (batch on axis 0)")
    fn.check_buffers_frozen(problem.module, head, "ntk")
    return out.shape[1]


def _forward_flops(engine: StructuredEngine, problem: Problem) -> float:
    """Multiply-adds of one forward pass per example (layer rules + the other parameters)."""
    return engine.forward_flops() + sum(problem.params[n].numel() for n in engine.rest)


STRUCTURED_OVERHEAD = 1.25  # hooks, unfold and cotangent copies; measured on the CNN benchmark
JACOBIAN_OVERHEAD = 2.0  # vmap(jacrev) per-example backward vs one batched backward (CNN, GPT-2)


def _batch_coupled(problem: Problem) -> list[str]:
    """Layers whose gradient depends on the whole batch (``nn.Embedding(scale_grad_by_freq)``):
    products over a batch (``ntvp``) would not give per-example gradients."""
    return [n for n, m in problem.module.named_modules()
            if isinstance(m, nn.Embedding) and m.scale_grad_by_freq]


def _costs(problem: Problem, st: StructuredEngine, n1: int, n2: int, o: int, output: str,
           symmetric: bool) -> dict[str, float]:
    """The ``auto`` cost model, multiply-adds per method.

    Cost model of ``"auto"`` (multiply-adds; ``F`` = forward cost per example, ``P`` = parameters,
    ``O`` outputs, ``N = N1 + N2`` examples (``N1`` when symmetric), ``E = N1 N2`` entries (halved
    when symmetric)): jacobian ``2 N F (1 + 2 O) + N O P + E O P`` (2 = measured overhead of the
    per-example ``vmap(jacrev)`` passes over one batched backward); ntvp ``2 N2 O (N1 + N2) F``;
    structured ``1.25 [N (F + O F + B) + E C]`` with ``C`` the per-entry layer-rule cost
    (``T^2 (d_in + O d_out)`` for a Gram rule, ``O d_in d_out`` for a layer contracted through
    explicit per-example gradients, e.g. a convolution), ``B`` the cost of building those
    gradients (``O T d_in d_out``), plus the full Jacobian passes if any parameter is not covered
    by a rule; 1.25 is the measured overhead of hooks and unfolding. The cheaper of jacobian and
    structured wins; ``ntvp`` is taken only when one example's Jacobian ``P O`` does not fit the
    1 GiB budget (it needs forward-mode AD, which fused attention kernels lack).
    """
    p = problem.n_params
    fwd = _forward_flops(st, problem)
    nf = n1 if symmetric else n1 + n2
    pairs = n1 * n2 / (2.0 if symmetric else 1.0)
    oo = o if output == "full" else 1
    rest = sum(problem.params[n].numel() for n in st.rest)
    passes = JACOBIAN_OVERHEAD * nf * fwd * (1 + 2 * o)  # forward + O backward, per example
    cost = {
        "jacobian": passes + nf * o * p + pairs * o * oo * p,
        "ntvp": 2 * n2 * o * (n1 + n2) * fwd,
        "structured": STRUCTURED_OVERHEAD * (
            nf * (fwd + o * fwd + st.build_flops()) + pairs * st.flops_per_entry())
            + (passes + nf * o * rest if st.rest else 0.0) + pairs * o * oo * rest,
    }
    if not st.groups:
        del cost["structured"]
    return cost


def _choose(problem: Problem, st: StructuredEngine, n1: int, n2: int, o: int, output: str,
            symmetric: bool) -> str:
    """The ``auto`` choice: the cheaper of jacobian and structured (ntvp only when forced)."""
    if problem.n_params * o * 4 > MEMORY_BUDGET and not _batch_coupled(problem):
        return "ntvp"  # one example's Jacobian does not fit: only products work
    # otherwise never ntvp: it needs forward-mode AD, which fused kernels (attention) lack, and
    # where it is the cheapest (tiny models, few examples) every method takes milliseconds
    cost = _costs(problem, st, n1, n2, o, output, symmetric)
    del cost["ntvp"]
    return min(cost, key=cost.get)


SMALL_WORK = 1e9  # multiply-adds below which ntk runs single-threaded on CPU (0: never)


class _Threads:
    """Run a small CPU kernel single-threaded, restoring the caller's thread count afterwards.

    With several torch threads each small op is an OpenMP region; when another process holds a
    core, every region waits for it (measured: a 4-example MLP kernel 1.4-3.4 s with 2 threads on
    a loaded 2-core machine, 0.02-0.05 s with 1). Work below :data:`SMALL_WORK` multiply-adds
    (~30 ms on one core) gains little from threads, so it runs on one. The argument checks and the
    probe always run on one thread; :meth:`release` restores the count before large work.
    ``torch.set_num_threads`` is process-wide: other threads computing concurrently see it too.
    """

    def __init__(self, device: torch.device) -> None:
        self.n = torch.get_num_threads()
        self.active = device.type == "cpu" and self.n > 1 and SMALL_WORK > 0

    def __enter__(self) -> _Threads:
        if self.active:
            torch.set_num_threads(1)
        return self

    def release(self) -> None:
        if self.active:
            torch.set_num_threads(self.n)
            self.active = False

    def __exit__(self, *exc: object) -> None:
        self.release()


def _default_block(method: str, problem: Problem, st: StructuredEngine | None, o: int,
                   n: int) -> int:
    item = torch.finfo(problem.dtype).bits // 8
    if method == "structured" and st is not None:
        per = sum(g.t * (g.d_in + o * g.d_out) if not g.explicit else o * st.width(g) * g.d_out
                  for g in st.groups)
        per += sum(o * problem.params[k].numel() for k in st.rest)
    elif method == "ntvp":
        per = 4 * o * problem.n_params  # cotangents of one column batch, a few copies
    else:
        per = 2 * o * problem.n_params
    return max(1, min(n, MEMORY_BUDGET // max(1, per * item)))


def _tiles(n: int, b: int) -> list[slice]:
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def ntk(
    model: nn.Module,
    x1: fn.Inputs,
    x2: fn.Inputs | None = None,
    *,
    method: str = "auto",
    output: str = "trace",
    params: Sequence[str] | Callable[[str, Tensor], bool] | None = None,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype | None = None,
    progress: bool | None = None,
    output_fn: fn.OutputFn = None,
    out: str | None = None,
    client: object | None = None,
) -> Tensor:
    """Empirical neural tangent kernel ``K(x, x') = J(x) J(x')^T``.

    ``J(x) = d f(x) / d theta`` is the Jacobian of the model output (``(N, O)``, or ``(N,)`` read as
    ``O = 1``) with respect to the selected parameters ``theta`` (default: all with
    ``requires_grad``). Entry ``K[n, m, a, b] = sum_p J_p(x1_n)_a J_p(x2_m)_b``.

    Args:
        model: any ``nn.Module``. For :class:`lazylab.regimes.Linearized` the kernel is the frozen
            one, of ``lin.model`` at ``lin.params0`` (same for ``center=True``). Other wrappers are
            differentiated as they are (``lazy(model, alpha)`` gives ``alpha**2 * K``).
        x1: inputs ``(N1, ...)``; x2: inputs ``(N2, ...)`` or None for ``x2 = x1`` (symmetric: only
            the lower triangle of tiles is computed, the result is exactly symmetric).
        method: ``"jacobian"`` (per-example Jacobians, ``vmap(jacrev)``, contracted parameter by
            parameter), ``"ntvp"`` (NTK-vector products, ``vjp`` then ``jvp``; never forms ``J``),
            ``"structured"`` (per-layer rules for ``nn.Linear``, ``nn.Conv1d/2d``, ``nn.Embedding``,
            ``nn.LayerNorm`` and Hugging Face ``Conv1D``; Jacobian path for other parameters; see
            :mod:`lazylab.ntk.structured`), ``"auto"``.
        output: ``"trace"`` -> ``(N1, N2)`` summed over output dims, ``"full"`` ->
            ``(N1, N2, O, O)``, ``"diagonal"`` -> ``(N1, N2, O)``.
        params: parameter names, or a predicate ``(name, param) -> bool``; e.g. the last layer only
            gives the random-features kernel.
        block_size: tile size (default: as large as fits about 1 GiB of per-tile features).
            Peak memory: the output, two tiles' features and a cache of column tiles (<= 1 GiB).
        dtype, device: compute dtype / device (default: the model's). The model is not modified.
        accumulate_dtype: e.g. ``torch.float64``: every contraction (sum over parameters) and the
            returned kernel use this dtype while the network runs in ``dtype`` (``"ntvp"`` has no
            separate contraction: its products run in ``dtype`` and the result is cast).
        progress: tqdm bar over tiles; default on when there are more than 16 tile pairs.
        output_fn: which output of a model returning a tuple/dict/``ModelOutput`` is ``f``
            (:func:`lazylab.functional.select_output`; default: a tensor, or ``"logits"``).
        out: path of a ``.npy`` file: the kernel is written tile by tile into it (memory-mapped;
            resumable after an interruption) and returned as a tensor over the file
            (:mod:`lazylab.ntk.out_of_core`).
        client: run the tiles on Dask: a ``distributed.Client``, ``"dask://HOST:PORT"``, or an
            int ``n`` for a ``LocalCluster`` of ``n`` workers (:mod:`lazylab.ntk.distributed`).

    Inputs (any dtype, tuples/dicts), the choice of ``"auto"`` and the eval-mode / BatchNorm /
    weight-sharing policies: see the module docstring (:mod:`lazylab.ntk.api`).

    Returns: a tensor on ``device`` in ``accumulate_dtype`` if given, else ``dtype``.
    Raises TypeError/ValueError for a bad ``method``/``output``/``block_size``/``params``, empty or
    non-finite inputs or weights, inputs the model rejects (naming ``x1``/``x2`` and the shape).
    """
    _check_options(method, output, block_size, accumulate_dtype)
    symmetric = x2 is None or x2 is x1
    x1 = _check_x(x1, "x1")
    if not symmetric:
        x2 = _check_x(x2, "x2")

    problem = _checked_problem(model, params, dtype, device, output_fn, method)
    x1 = problem.prep_input(x1)
    x2 = x1 if symmetric else problem.prep_input(x2)
    with problem.eval_mode(), _Threads(problem.device) as threads:
        o = _outputs(problem, x1, x2, symmetric)
        engine, b = _plan(problem, method, output, x1, x2, o, symmetric, block_size,
                          accumulate_dtype, threads, out is not None or client is not None, client)
        if out is not None or client is not None:  # on disk and/or on Dask (lazylab.ntk.tile_jobs)
            from lazylab.ntk.tile_jobs import run_tiles
            return run_tiles(engine, x1, x2, symmetric, b, o, output, accumulate_dtype or problem.dtype,
                             problem.device, progress, out=out, client=client)
        return _tiled(engine, x1, x2, symmetric, b, o, output,
                      accumulate_dtype or problem.dtype, problem.device, progress)


def _checked_problem(model: nn.Module, params: object, dtype: torch.dtype | None,
                     device: torch.device | str | None, output_fn: fn.OutputFn,
                     method: str) -> Problem:
    """The functional problem; refuses NaN/inf weights and ``ntvp`` on batch-coupled layers."""
    problem = build_problem(model, params, dtype, device, output_fn=output_fn)
    check_finite_tensors({**problem.frozen, **problem.params}.items(), "ntk")
    if method == "ntvp" and _batch_coupled(problem):
        raise ValueError(f"method='ntvp' needs per-example gradients, but {_batch_coupled(problem)}"
                         " use scale_grad_by_freq (batch-dependent); use method='jacobian'")
    return problem


def _plan(problem: Problem, method: str, output: str, x1: fn.Inputs, x2: fn.Inputs, o: int,
          symmetric: bool, block_size: int | None, accumulate_dtype: torch.dtype | None,
          threads: _Threads, tiled_jobs: bool, client: object | None) -> tuple[object, int]:
    """The engine of ``method`` (``"auto"`` resolved by the cost model) and the tile size ``b``;
    releases the single-thread section when the work is large (``SMALL_WORK``)."""
    n1, n2 = fn.batch_size(x1), fn.batch_size(x2)
    st = None
    if method in ("auto", "structured"):
        st = StructuredEngine(problem, output, accumulate_dtype, fn.take(x1, slice(0, 2)),
                              block_size or n1)
    if method == "auto":
        method = _choose(problem, st, n1, n2, o, output, symmetric)
    if _work(method, problem, st, n1, n2, o, output, symmetric) >= SMALL_WORK:
        threads.release()
    b = block_size or _tile_size(method, problem, st, n1, n2, o, output, symmetric)
    if block_size is None and tiled_jobs:
        from lazylab.ntk.tile_jobs import tile_cap
        b = min(b, tile_cap(max(n1, n2), o, output, accumulate_dtype or problem.dtype, client))
    if method == "structured":
        st.set_tile(b)
        return st, b
    return _engine(method, problem, output, accumulate_dtype), b


def _check_options(method: str, output: str, block_size: int | None,
                   accumulate_dtype: torch.dtype | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise TypeError(f"block_size must be a positive int or None, got {block_size!r}")
        if block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size}")
    if accumulate_dtype is not None and not accumulate_dtype.is_floating_point:
        raise TypeError(f"accumulate_dtype must be a floating dtype, got {accumulate_dtype}")


def _outputs(problem: Problem, x1: fn.Inputs, x2: fn.Inputs, symmetric: bool) -> int:
    """Output dim ``O`` (probing ``x1`` and, if given, ``x2``, which must agree)."""
    o = _probe(problem, x1, "x1")
    if not symmetric:
        o2 = _probe(problem, x2, "x2")
        if o2 != o:
            raise ValueError(f"the model gives {o} outputs on x1 but {o2} on x2")
    return o


def _tile_size(method: str, problem: Problem, st: StructuredEngine | None, n1: int, n2: int,
               o: int, output: str, symmetric: bool) -> int:
    """Default tile: as large as fits the memory budget; a symmetric one-tile kernel whose
    contraction costs more than ``SPLIT_WORK`` in 4 row tiles (only the lower triangle: 10/16 of
    the contraction, the features of each tile built once and cached)."""
    b = _default_block(method, problem, st, o, max(n1, n2))
    if symmetric and b >= n1 >= 32 and _contraction(method, problem, st, n1, o,
                                                    output) > SPLIT_WORK:
        b = -(-n1 // 4)
    return b


def _engine(method: str, problem: Problem, output: str, acc: torch.dtype | None) -> object:
    if method == "jacobian":
        return JacobianEngine(problem, output, acc)
    return NTVPEngine(problem, output, acc, chunk_size=_ntvp_chunk(problem))


def _work(method: str, problem: Problem, st: StructuredEngine | None, n1: int, n2: int, o: int,
          output: str, symmetric: bool) -> float:
    """Multiply-adds of the chosen method (the cost model; forward cost ~ ``P`` without a plan)."""
    if st is not None and st.groups:
        return _costs(problem, st, n1, n2, o, output, symmetric)[method]
    p, nf = problem.n_params, n1 + n2
    if method == "ntvp":
        return 2.0 * n2 * o * nf * p
    return nf * (1 + 3 * o) * p + n1 * n2 * o * (o if output == "full" else 1) * p


SPLIT_WORK = 1e9  # a symmetric kernel whose contraction costs more is computed in 4x4 tiles


def _contraction(method: str, problem: Problem, st: StructuredEngine | None, n: int, o: int,
                 output: str) -> float:
    """Multiply-adds of the ``n x n`` contraction alone (feature building excluded)."""
    oo = o if output == "full" else 1
    if method == "structured" and st is not None:
        rest = sum(problem.params[k].numel() for k in st.rest)
        return n * n * (st.flops_per_entry() + o * oo * rest)
    if method == "jacobian":
        return float(n * n * o * oo * problem.n_params)
    return 0.0  # ntvp: products, no separate contraction


def _ntvp_chunk(problem: Problem) -> int:
    """Basis vectors per vmapped vjp/jvp batch: ``chunk * P`` cotangents (a few copies) fit 1 GiB."""
    item = torch.finfo(problem.dtype).bits // 8
    return max(1, MEMORY_BUDGET // (4 * problem.n_params * item))


def _nbytes(obj: object) -> int:
    """Bytes held by the tensors in a (nested) tile-feature structure."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    return 0


def _transpose(blk: Tensor, output: str) -> Tensor:
    """``K(x2, x1)`` from ``K(x1, x2)``: swap the example axes (and the output axes if full)."""
    return blk.permute(1, 0, 3, 2) if output == "full" else blk.transpose(0, 1)


def _symmetrize(blk: Tensor, output: str) -> Tensor:
    """Diagonal tile made exactly symmetric (averages away last-bit rounding differences)."""
    return (blk + _transpose(blk, output)) / 2


def _tiled(engine: object, x1: fn.Inputs, x2: fn.Inputs, symmetric: bool, b: int, o: int,
           output: str, dtype: torch.dtype, device: torch.device, progress: bool | None) -> Tensor:
    n1, n2 = fn.batch_size(x1), fn.batch_size(x2)
    tail = {"trace": (), "full": (o, o), "diagonal": (o,)}[output]
    rows, cols = _tiles(n1, b), _tiles(n2, b)
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not symmetric or j <= i]
    if len(pairs) == 1:
        s = engine.prepare(x1)
        blk = engine.block(s, s if symmetric else engine.prepare(x2)).to(dtype)
        return _symmetrize(blk, output) if symmetric else blk
    out = torch.empty((n1, n2, *tail), dtype=dtype, device=device)
    show = len(pairs) > 16 if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(pairs), desc=f"ntk {n1}x{n2} tiles", unit="tile")
    cache: dict[int, object] = {}  # column-tile features kept while they fit MEMORY_BUDGET
    cached = [0]

    def column(j: int, c: slice) -> object:
        if j in cache:
            return cache[j]
        s = engine.prepare(fn.take(x2, c))
        size = _nbytes(s)
        if cached[0] + size <= MEMORY_BUDGET:
            cache[j] = s
            cached[0] += size
        return s

    try:
        for i, r in enumerate(rows):
            s1 = cache[i] if symmetric and i in cache else engine.prepare(fn.take(x1, r))
            if symmetric and i not in cache and cached[0] + _nbytes(s1) <= MEMORY_BUDGET:
                cache[i] = s1
                cached[0] += _nbytes(s1)
            for j, c in enumerate(cols):
                if symmetric and j > i:
                    break
                s2 = s1 if symmetric and i == j else column(j, c)
                blk = engine.block(s1, s2).to(dtype)
                out[r, c] = _symmetrize(blk, output) if symmetric and i == j else blk
                if symmetric and i != j:
                    out[c, r] = _transpose(blk, output)
                del s2, blk
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


__all__ = ["ntk", "METHODS", "OUTPUTS"]
