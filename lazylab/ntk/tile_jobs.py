"""Tiles of an NTK computed as independent jobs: into RAM or a file, in-process or on Dask.

``ntk(..., out=PATH)`` and ``ntk(..., client=...)`` land here. The kernel ``x1 x x2`` is cut into
``b x b`` tiles (only the lower triangle ``j <= i`` when ``x2`` is None); each tile pair ``(i, j)``
is one job ``K[r_i, c_j] = block(prepare(x1[r_i]), prepare(x2[c_j]))`` whose result is written by a
*sink* (``write`` a tile; ``ready`` before the first; ``result``; ``close``; a sink with a ``file``
also ``mark``-s tiles a worker wrote into it):
:class:`MemorySink` (a tensor), :class:`lazylab.ntk.out_of_core.TileStore` (a ``.npy``
file with a record of finished tiles) or, for an in-RAM kernel computed on Dask,
:class:`lazylab.ntk.out_of_core.ShmSink` (a file in ``/dev/shm`` that workers on this machine write
into themselves, so tiles never travel to the client). Jobs already recorded as finished are skipped, so an
interrupted ``out=`` run resumes. Tile features are cached (:class:`FeatureCache`, at most
``MEMORY_BUDGET`` bytes) so a row or column tile is prepared once while it fits.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lazylab.ntk.api import MEMORY_BUDGET, _nbytes, _symmetrize, _tiles, _transpose

OUT_TILE_BYTES = 256 << 20  # one output tile (and its few temporaries) stays near this size
DASK_MIN_TILES = 4  # on Dask, at least this many tiles per side (work for every worker)


def tile_cap(n: int, o: int, output: str, dtype: torch.dtype, client: object | None) -> int:
    """Largest default tile side for ``out=``/``client=``: a tile holds ``OUT_TILE_BYTES``.

    ``b = floor(sqrt(OUT_TILE_BYTES / (itemsize * O_tail)))`` (``O_tail`` = 1, ``O``, ``O^2`` for
    trace, diagonal, full); on Dask also ``b <= ceil(n / DASK_MIN_TILES)``.
    """
    tail = {"trace": 1, "diagonal": o, "full": o * o}[output]
    item = torch.finfo(dtype).bits // 8
    b = max(1, math.isqrt(OUT_TILE_BYTES // (item * tail)))
    if client is not None:
        b = min(b, max(1, math.ceil(n / DASK_MIN_TILES)))
    return b


@dataclass
class TilePlan:
    """Geometry of a tiled kernel: tile slices, the tile pairs to compute, the output shape."""

    n1: int
    n2: int
    b: int
    symmetric: bool
    output: str
    o: int
    dtype: torch.dtype
    rows: list[slice] = field(init=False)
    cols: list[slice] = field(init=False)

    def __post_init__(self) -> None:
        self.rows, self.cols = _tiles(self.n1, self.b), _tiles(self.n2, self.b)

    @property
    def shape(self) -> tuple[int, ...]:
        tail = {"trace": (), "full": (self.o, self.o), "diagonal": (self.o,)}[self.output]
        return (self.n1, self.n2, *tail)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))
                if not self.symmetric or j <= i]


class FeatureCache:
    """Tile features kept while their total stays within ``budget`` bytes (first come, kept).

    Keep-first rather than LRU: tiles are visited in cyclic column scans, where LRU would evict
    each entry just before it is needed again. The two most recent entries are also kept (outside
    the budget), so a row tile is prepared once per row even when the budget is full.
    Thread-safe (Dask workers may run several threads).
    """

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.budget, self.used, self.items = budget, 0, {}
        self.recent: list[tuple[object, object]] = []
        self.lock = threading.Lock()

    def get(self, key: object, make: Callable[[], object]) -> object:
        with self.lock:
            if key in self.items:
                return self.items[key]
            for k, v in self.recent:
                if k == key:
                    return v
        value = make()
        size = _nbytes(value)
        with self.lock:
            if key not in self.items and self.used + size <= self.budget:
                self.items[key] = value
                self.used += size
            else:
                self.recent = [*self.recent[-1:], (key, value)]
        return value


def compute_tile(engine: object, x1: Tensor, x2: Tensor, plan: TilePlan, i: int, j: int,
                 cache: FeatureCache) -> Tensor:
    """Tile ``K[rows[i], cols[j]]`` in ``plan.dtype`` (diagonal tiles of a symmetric kernel are
    symmetrized exactly, as in the in-memory path)."""
    s1 = cache.get(("r", i), lambda: engine.prepare(x1[plan.rows[i]]))
    if plan.symmetric:
        s2 = s1 if i == j else cache.get(("r", j), lambda: engine.prepare(x1[plan.rows[j]]))
    else:
        s2 = cache.get(("c", j), lambda: engine.prepare(x2[plan.cols[j]]))
    blk = engine.block(s1, s2).to(plan.dtype)
    return _symmetrize(blk, plan.output) if plan.symmetric and i == j else blk


class MemorySink:
    """The kernel as one tensor on ``device``; ``write`` places a tile (and its mirror)."""

    def __init__(self, plan: TilePlan, device: torch.device) -> None:
        self.plan, self.done = plan, set()
        self.out = torch.empty(plan.shape, dtype=plan.dtype, device=device)

    def write(self, i: int, j: int, blk: Tensor) -> None:
        p = self.plan
        blk = blk.to(self.out.device)
        self.out[p.rows[i], p.cols[j]] = blk
        if p.symmetric and i != j:
            self.out[p.cols[j], p.rows[i]] = _transpose(blk, p.output)
        self.done.add((i, j))

    def result(self) -> Tensor:
        return self.out

    def ready(self) -> None:
        pass

    def close(self) -> None:
        pass


def _sink(plan: TilePlan, engine: object, x1: Tensor, x2: Tensor, device: torch.device,
          out: object | None, client: object | None) -> object:
    """Where tiles go: ``out``'s file, else (Dask, CPU) a RAM-backed file the workers write into,
    else a tensor."""
    from lazylab.ntk import out_of_core as ooc
    if out is not None:
        return ooc.TileStore(out, plan, ooc.fingerprint(engine, x1, None if plan.symmetric else x2))
    if client is not None and device.type == "cpu":
        directory = ooc.shm_dir(math.prod(plan.shape) * (torch.finfo(plan.dtype).bits // 8))
        if directory is not None:
            return ooc.ShmSink(plan, directory)
    return MemorySink(plan, device)


def run_tiles(engine: object, x1: Tensor, x2: Tensor, symmetric: bool, b: int, o: int, output: str,
              dtype: torch.dtype, device: torch.device, progress: bool | None, *,
              out: object | None = None, client: object | None = None) -> Tensor:
    """Compute the tiles not yet finished, in-process or on Dask, into RAM or ``out``.

    With ``out`` an existing record fixes the tiling (its ``b`` replaces the given one), so a
    resumed run computes exactly the missing tiles.
    """
    sink = _sink(TilePlan(x1.shape[0], x2.shape[0], b, symmetric, output, o, dtype), engine,
                 x1, x2, device, out, client)
    plan = sink.plan
    todo = [p for p in plan.pairs if p not in sink.done]
    bar = None
    if progress or (progress is None and len(todo) > 16):
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"ntk {plan.n1}x{plan.n2} tiles", unit="tile")
    try:
        if client is None:
            cache = FeatureCache()
            for i, j in todo:
                sink.write(i, j, compute_tile(engine, x1, x2, plan, i, j, cache))
                if bar is not None:
                    bar.update(1)
        else:
            from lazylab.ntk.distributed import run_on_dask
            run_on_dask(engine, x1, x2, plan, todo, sink, client, bar)
    except BaseException:
        sink.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return sink.result()


__all__ = ["run_tiles", "tile_cap", "TilePlan", "FeatureCache", "MemorySink", "compute_tile"]
