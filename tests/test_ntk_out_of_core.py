"""ntk(..., out=PATH): a kernel written tile by tile into a .npy file, resumable after interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import lazylab
from lazylab.ntk import tile_jobs
from lazylab.ntk.out_of_core import open_kernel, record_path


def _mlp(seed: int = 0, out: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return lazylab.MLP([6, 16, 16, out]).double()


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_out_equals_in_memory_kernel(tmp_path):
    net, x = _mlp(), _x(37)
    ref = lazylab.ntk(net, x)
    k = lazylab.ntk(net, x, out=tmp_path / "k.npy", block_size=8)
    assert (k - ref).abs().max() < 1e-12
    assert torch.equal(k, k.T)  # mirrored tiles, symmetrized diagonal tiles
    on_disk = np.load(tmp_path / "k.npy")
    assert np.abs(on_disk - ref.numpy()).max() < 1e-12
    assert np.array_equal(open_kernel(tmp_path / "k.npy"), on_disk)
    rec = json.loads(record_path(tmp_path / "k.npy").read_text())
    assert len(rec["done"]) == 15 and rec["block"] == 8  # 5 row tiles: 5 * 6 / 2 lower-triangle


def test_out_full_output_two_inputs(tmp_path):
    net, x1, x2 = _mlp(out=3), _x(13), _x(9, seed=2)
    ref = lazylab.ntk(net, x1, x2, output="full")
    k = lazylab.ntk(net, x1, x2, output="full", out=str(tmp_path / "kf.npy"), block_size=4)
    assert k.shape == (13, 9, 3, 3)
    assert (k - ref).abs().max() < 1e-12


def test_interrupted_write_resumes_without_recomputing(tmp_path, monkeypatch):
    net, x = _mlp(), _x(40)
    ref = lazylab.ntk(net, x)
    path = tmp_path / "k.npy"
    calls = []
    real = tile_jobs.compute_tile

    def failing(*args, **kw):
        if len(calls) == 4:
            raise KeyboardInterrupt("injected interruption")
        calls.append(args[4:6])
        return real(*args, **kw)

    monkeypatch.setattr(tile_jobs, "compute_tile", failing)
    with pytest.raises(KeyboardInterrupt):
        lazylab.ntk(net, x, out=path, block_size=10)  # 4 row tiles -> 10 tile pairs
    done = {tuple(p) for p in json.loads(record_path(path).read_text())["done"]}
    assert done == set(calls) and len(done) == 4
    with pytest.raises(ValueError, match="unfinished: 6 of 10"):
        open_kernel(path)

    resumed = []
    monkeypatch.setattr(tile_jobs, "compute_tile",
                        lambda *a, **kw: resumed.append(a[4:6]) or real(*a, **kw))
    k = lazylab.ntk(net, x, out=path)  # block_size taken from the record
    assert len(resumed) == 6 and not set(resumed) & done  # finished tiles not recomputed
    assert (k - ref).abs().max() < 1e-12


_KILLED_CHILD = textwrap.dedent("""
    import sys, time, torch, lazylab
    from lazylab.ntk import tile_jobs
    real = tile_jobs.compute_tile
    def slow(*a, **kw):
        time.sleep(0.3)
        return real(*a, **kw)
    tile_jobs.compute_tile = slow
    torch.manual_seed(0)
    net = lazylab.MLP([6, 16, 16, 1]).double()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lazylab.ntk(net, x, out=sys.argv[1], block_size=5, progress=False)  # 36 tile pairs
""")


def test_killed_process_resumes(tmp_path, monkeypatch):
    """SIGKILL at an arbitrary point of the write loop, then resume in this process."""
    path = tmp_path / "k.npy"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(path)])
    rec = record_path(path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if rec.exists() and len(json.loads(rec.read_text())["done"]) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {tuple(p) for p in json.loads(rec.read_text())["done"]}
    assert 3 <= len(done) < 36
    resumed = []
    real = tile_jobs.compute_tile
    monkeypatch.setattr(tile_jobs, "compute_tile",
                        lambda *a, **kw: resumed.append(a[4:6]) or real(*a, **kw))
    net, x = _mlp(), _x(40)
    k = lazylab.ntk(net, x, out=path)
    assert len(resumed) == 36 - len(done) and not set(resumed) & done
    assert (k - lazylab.ntk(net, x)).abs().max() < 1e-12


def test_resume_refuses_other_inputs_or_model(tmp_path, monkeypatch):
    path = tmp_path / "k.npy"
    net, x = _mlp(), _x(20)
    real = tile_jobs.compute_tile
    n = []

    def once(*a, **kw):
        if n:
            raise RuntimeError("stop")
        n.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(tile_jobs, "compute_tile", once)
    with pytest.raises(RuntimeError, match="stop"):
        lazylab.ntk(net, x, out=path, block_size=5)
    monkeypatch.setattr(tile_jobs, "compute_tile", real)
    with pytest.raises(ValueError, match="different inputs or parameters"):
        lazylab.ntk(_mlp(seed=5), x, out=path)
    with pytest.raises(ValueError, match="different inputs or parameters"):
        lazylab.ntk(net, x + 1e-9, out=path)
    with pytest.raises(ValueError, match="different shape"):
        lazylab.ntk(net, x[:19], out=path)
    with pytest.raises(ValueError, match="different dtype"):
        lazylab.ntk(net, x, out=path, accumulate_dtype=torch.float32)


def test_out_bad_arguments(tmp_path):
    net, x = _mlp(), _x(5)
    with pytest.raises(TypeError, match="out must be a file path"):
        lazylab.ntk(net, x, out=3)
    (tmp_path / "there.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="no tile record"):
        lazylab.ntk(net, x, out=tmp_path / "there.npy")


def test_default_tile_is_capped_for_out():
    """Without block_size the out= tile holds OUT_TILE_BYTES: 8192^2 float32 entries."""
    assert tile_jobs.tile_cap(50000, 1, "trace", torch.float32, None) == 8192
    assert tile_jobs.tile_cap(50000, 1, "trace", torch.float64, None) == 5792
    assert tile_jobs.tile_cap(10000, 1, "trace", torch.float32, "client") == 2500


def test_shm_sink_roundtrip_and_no_room(tmp_path):
    """ShmSink: tiles written through its file (as a Dask worker does) or shipped to ``write`` land
    in the returned tensor (mirror included), the file is gone after ``result``; ``shm_dir``
    refuses a directory without room (the caller then keeps the kernel in a plain tensor)."""
    from lazylab.ntk.out_of_core import ShmSink, shm_dir
    from lazylab.ntk.tile_jobs import TilePlan

    assert shm_dir(10**18, str(tmp_path)) is None and shm_dir(10, str(tmp_path)) == str(tmp_path)
    plan = TilePlan(5, 5, 3, True, "trace", 1, torch.float64)
    sink = ShmSink(plan, str(tmp_path))
    k = torch.randn(5, 5, dtype=torch.float64)
    k = k + k.T
    sink.file.put(1, 0, k[3:, :3])  # a worker's write
    sink.mark(1, 0)
    sink.write(0, 0, k[:3, :3])
    sink.write(1, 1, k[3:, 3:])
    out = sink.result()
    assert torch.equal(out, k) and sink.done == {(0, 0), (1, 0), (1, 1)}
    assert not sink.path.exists()


def test_shm_sink_reservation_error_surfaces_in_ready(tmp_path, monkeypatch):
    """The space reservation runs in a thread; its failure (a full tmpfs) is raised by ``ready``
    in the caller, which a Dask run calls before submitting any tile, and the file is removed."""
    import errno

    from lazylab.ntk import out_of_core
    from lazylab.ntk.tile_jobs import TilePlan

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(out_of_core.os, "posix_fallocate", full)
    sink = out_of_core.ShmSink(TilePlan(5, 5, 3, True, "trace", 1, torch.float64), str(tmp_path))
    with pytest.raises(OSError, match="No space left"):
        sink.ready()
    assert not sink.path.exists()
