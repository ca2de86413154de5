"""Kernels larger than RAM: a ``.npy`` file written tile by tile, with a resumable tile record.

``ntk(model, x, out="K.npy")`` creates ``K.npy`` (``numpy.lib.format.open_memmap``: a standard
``.npy`` header followed by the raw C-order array; the file is sparse until written) and a record
``K.npy.tiles.json`` listing the tile pairs already on disk. Each tile is written through a
memory map of its row band only (mapped, written, ``flush``-ed (msync), unmapped), so resident
memory holds one tile, never the file. Only after the flush is the tile added to the record, and
the record is replaced atomically (write a temporary file, ``fsync``, ``os.replace``): after an
interruption at any point the record lists only tiles that are fully on disk, and a second call
with the same arguments computes the others. The record stores the shape, dtype, output mode,
tiling and a SHA-256 fingerprint of the inputs and parameters; a resume with anything different is
refused.

Why ``.npy`` and not Zarr: the kernel is dense floating-point data that does not compress, every
reader (numpy, torch via ``np.load(mmap_mode="r")``, the CG solvers of
:mod:`lazylab.kernel_solvers`) memory-maps it without a new dependency, and rows are contiguous,
which is what a row-tiled matrix-vector product reads. Zarr's chunk files would add a dependency
and a chunk index for no gain on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor

from lazylab.ntk.api import _transpose
from lazylab.ntk.tile_jobs import TilePlan

RECORD_SUFFIX = ".tiles.json"


def record_path(path: str | os.PathLike) -> Path:
    """The tile record that goes with kernel file ``path``: ``path + ".tiles.json"``."""
    p = Path(path)
    return p.with_name(p.name + RECORD_SUFFIX)


def fingerprint(engine: object, x1: Tensor, x2: Tensor | None) -> str:
    """SHA-256 of the engine kind, inputs and all parameter/buffer values (hashing ~1 GB/s)."""
    h = hashlib.sha256(type(engine).__name__.encode())
    problem = engine.problem
    items = [("x1", x1)] + ([] if x2 is None else [("x2", x2)])
    items += sorted({**problem.frozen, **problem.params}.items())
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


class TileFile:
    """Where the tiles of ``plan`` go in the ``.npy`` file ``path``; small and picklable.

    ``put(i, j, tile)`` writes a tile (and its mirror for a symmetric kernel) through a memory map
    of its row band only, then ``flush``-es (msync) and unmaps: resident memory holds one tile.
    Dask workers that see the same file write their tiles themselves (:meth:`visible`), so the
    client neither receives nor copies them. ``writer``: a nonce that must match the ``writer`` of
    the file's tile record, so a worker on another machine never writes into a different file that
    happens to have the same path (empty: no record to check, the path itself is unique).
    """

    def __init__(self, path: Path, plan: TilePlan, writer: str = "") -> None:
        self.path, self.plan, self.writer = Path(path), plan, writer
        self.offset = np.load(self.path, mmap_mode="r").offset
        self.np_dtype = _np_dtype(plan.dtype)

    def visible(self) -> bool:
        """Whether this process sees the file (and, with a ``writer``, the same record)."""
        if not self.path.exists():
            return False
        if not self.writer:
            return True
        try:
            return json.loads(record_path(self.path).read_text()).get("writer") == self.writer
        except (OSError, ValueError):
            return False

    def _put(self, rows: slice, cols: slice, arr: np.ndarray) -> None:
        shape = self.plan.shape
        row_bytes = int(np.prod(shape[1:])) * self.np_dtype.itemsize
        band = np.memmap(self.path, dtype=self.np_dtype, mode="r+",
                         offset=self.offset + rows.start * row_bytes,
                         shape=(rows.stop - rows.start, *shape[1:]))
        band[:, cols] = arr
        band.flush()
        del band

    def put(self, i: int, j: int, blk: Tensor) -> None:
        p = self.plan
        blk = blk.detach().to("cpu", p.dtype)
        self._put(p.rows[i], p.cols[j], blk.numpy())
        if p.symmetric and i != j:
            self._put(p.cols[j], p.rows[i], _transpose(blk, p.output).numpy())


def shm_dir(nbytes: int, directory: str = "/dev/shm") -> str | None:
    """``directory`` (RAM-backed on Linux) if writable with room for ``nbytes`` (+10 %), else None."""
    try:
        if os.access(directory, os.W_OK) and shutil.disk_usage(directory).free > 1.1 * nbytes:
            return directory
    except OSError:
        pass
    return None


class ShmSink:
    """The in-RAM kernel of a Dask run: a ``.npy`` in a RAM-backed directory that workers on this
    machine write into (:class:`TileFile`), returned as a tensor over it (no copy, no transfer).

    The file's space is reserved before any tile is written (``posix_fallocate``: a full tmpfs
    raises in :meth:`ready`, not a SIGBUS in a worker later); the reservation (85 ms for 400 MB)
    runs in a thread while the caller scatters the model and inputs, and :meth:`ready` waits for it.
    The file is unlinked by :meth:`result`/:meth:`close`; the memory lives as long as the returned
    tensor. Tiles from workers that do not see the file arrive by ``write``.
    """

    def __init__(self, plan: TilePlan, directory: str) -> None:
        fd, name = tempfile.mkstemp(prefix="lazylab-ntk-", suffix=".npy", dir=directory)
        os.close(fd)
        self.path, self.plan, self.done = Path(name), plan, set()
        self._error: BaseException | None = None
        self._reserving: threading.Thread | None = None
        try:
            self.array = open_memmap(self.path, mode="w+", dtype=_np_dtype(plan.dtype),
                                     shape=plan.shape)
            self.file = TileFile(self.path, plan)
        except BaseException:
            self.close()
            raise
        self._reserving = threading.Thread(target=self._reserve, daemon=True)
        self._reserving.start()

    def _reserve(self) -> None:
        try:
            with open(self.path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(self.path))
        except BaseException as e:  # re-raised by ready() in the caller's thread
            self._error = e

    def ready(self) -> None:
        """Wait for the reservation; raise its error (e.g. ``OSError: No space left``)."""
        if self._reserving is not None:
            self._reserving.join()
        if self._error is not None:
            self.close()
            raise self._error

    def write(self, i: int, j: int, blk: Tensor) -> None:
        self.file.put(i, j, blk)
        self.done.add((i, j))

    def mark(self, i: int, j: int) -> None:
        self.done.add((i, j))

    def result(self) -> Tensor:
        self.ready()
        self.close()
        return torch.from_numpy(self.array)

    def close(self) -> None:
        if self._reserving is not None:
            self._reserving.join()
        self.path.unlink(missing_ok=True)


class TileStore:
    """A ``.npy`` kernel file plus its record of finished tiles (see the module docstring).

    ``done``: set of finished tile pairs ``(i, j)``; ``plan``: the tiling in force (taken from the
    record when resuming); ``write(i, j, tile)`` puts a tile (and its mirror for a symmetric
    kernel) on disk and records it; ``mark(i, j)`` records a tile a Dask worker wrote through
    ``file`` (a :class:`TileFile`); ``result()`` is a tensor over the memory-mapped file.
    """

    def __init__(self, path: str | os.PathLike, plan: TilePlan, print_: str) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"out must be a file path (str or PathLike), got {type(path).__name__}")
        self.path, self.record = Path(path), record_path(path)
        self.meta = {"shape": list(plan.shape), "dtype": str(plan.dtype), "output": plan.output,
                     "symmetric": plan.symmetric, "fingerprint": print_}
        self.writer = ""
        if self.record.exists():
            self._resume(plan)
        else:
            if self.path.exists():
                raise FileExistsError(f"out={str(path)!r} exists but has no tile record "
                                      f"{self.record.name}; remove it or choose another path")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mm = open_memmap(self.path, mode="w+", dtype=_np_dtype(plan.dtype), shape=plan.shape)
            del mm
            self.plan, self.done = plan, set()
        self.writer = uuid.uuid4().hex  # lets a Dask worker check that it sees this very file
        self._save()
        self.file = TileFile(self.path, self.plan, writer=self.writer)

    def _resume(self, plan: TilePlan) -> None:
        rec = json.loads(self.record.read_text())
        for key, value in self.meta.items():
            if rec.get(key) != value:
                what = "inputs or parameters" if key == "fingerprint" else key
                raise ValueError(f"out={str(self.path)!r} holds a partial kernel with a different "
                                 f"{what} ({rec.get(key)!r} vs {value!r}); remove it and its "
                                 f"{self.record.name} to start over")
        if not self.path.exists():
            raise FileNotFoundError(f"out={str(self.path)!r}: the record exists but the file is gone")
        self.plan = TilePlan(plan.n1, plan.n2, int(rec["block"]), plan.symmetric, plan.output,
                             plan.o, plan.dtype)
        self.done = {tuple(p) for p in rec["done"]}

    def _save(self) -> None:
        rec = {**self.meta, "block": self.plan.b, "writer": self.writer, "done": sorted(self.done)}
        tmp = self.record.with_name(self.record.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.record)

    def write(self, i: int, j: int, blk: Tensor) -> None:
        """Put a tile (and its mirror) on disk, then record it."""
        self.file.put(i, j, blk)
        self.mark(i, j)

    def mark(self, i: int, j: int) -> None:
        """Record tile ``(i, j)`` as finished (its data is already flushed, e.g. by a worker)."""
        self.done.add((i, j))
        self._save()

    def ready(self) -> None:
        pass

    def close(self) -> None:
        pass

    def result(self) -> Tensor:
        """The finished kernel as a tensor over the memory-mapped file (no copy in RAM)."""
        return torch.from_numpy(np.load(self.path, mmap_mode="r+"))


def open_kernel(path: str | os.PathLike, writable: bool = False) -> np.memmap:
    """A kernel written by ``ntk(..., out=path)``, memory-mapped; refuses an unfinished one."""
    rec = record_path(path)
    if rec.exists():
        meta = json.loads(rec.read_text())
        plan = TilePlan(meta["shape"][0], meta["shape"][1], meta["block"], meta["symmetric"],
                        meta["output"], 1, torch.float32)
        missing = len(plan.pairs) - len(meta["done"])
        if missing:
            raise ValueError(f"{str(path)!r} is unfinished: {missing} of {len(plan.pairs)} tiles "
                             "missing; call ntk(..., out=path) again with the same arguments")
    return np.load(path, mmap_mode="r+" if writable else "r")


__all__ = ["TileStore", "TileFile", "ShmSink", "shm_dir", "open_kernel", "fingerprint", "record_path"]
