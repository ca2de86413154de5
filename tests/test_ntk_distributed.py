"""ntk(..., client=...): tiles on a Dask LocalCluster, same numbers, a killed worker survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import lazylab
from lazylab.ntk import api as ntk_api
from lazylab.ntk import distributed as ntk_dask
from lazylab.ntk import out_of_core, tile_jobs

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file


@pytest.fixture(scope="module")
def client():
    from lazylab.ntk.distributed import local_cluster

    c, cluster = local_cluster(2)
    yield c
    c.close()
    cluster.close()


def _mlp(out: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return lazylab.MLP([6, 16, 16, out]).double()


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dask_equals_local_symmetric(client):
    net, x = _mlp(), _x(50)
    ref = lazylab.ntk(net, x)
    k = lazylab.ntk(net, x, client=client, block_size=12)  # 5 row tiles, 15 tasks
    assert (k - ref).abs().max() < 1e-12
    assert torch.equal(k, k.T)


def test_dask_equals_local_full_two_inputs_default_tiles(client):
    net, x1, x2 = _mlp(out=3), _x(21), _x(17, seed=2)
    ref = lazylab.ntk(net, x1, x2, output="full")
    k = lazylab.ntk(net, x1, x2, output="full", client=client)  # default: 4 tiles per side
    assert k.shape == (21, 17, 3, 3)
    assert (k - ref).abs().max() < 1e-12


def test_dask_into_file(client, tmp_path):
    net, x = _mlp(), _x(30)
    k = lazylab.ntk(net, x, client=client, out=tmp_path / "k.npy", block_size=7)
    assert (k - lazylab.ntk(net, x)).abs().max() < 1e-12


def test_workers_write_tiles_in_place(client, monkeypatch):
    """An in-RAM kernel on local workers: each tile is written by its worker into a /dev/shm file
    the client maps; the client receives no tile, and the file is unlinked once returned."""
    shipped, marked, paths = [], [], []
    real_init = out_of_core.ShmSink.__init__

    def init(self, *a):
        real_init(self, *a)
        paths.append(self.path)

    monkeypatch.setattr(out_of_core.ShmSink, "__init__", init)
    monkeypatch.setattr(out_of_core.ShmSink, "write", lambda self, i, j, b: shipped.append((i, j)))
    real_mark = out_of_core.ShmSink.mark
    monkeypatch.setattr(out_of_core.ShmSink, "mark",
                        lambda self, i, j: (marked.append((i, j)), real_mark(self, i, j)))
    net, x = _mlp(), _x(40)
    k = lazylab.ntk(net, x, client=client, block_size=10)
    assert shipped == [] and sorted(marked) == tile_jobs.TilePlan(40, 40, 10, True, "trace", 1,
                                                                   torch.float64).pairs
    assert (k - lazylab.ntk(net, x)).abs().max() < 1e-12 and torch.equal(k, k.T)
    assert len(paths) == 1 and not paths[0].exists()


def test_worker_that_cannot_see_the_file_returns_the_tile(tmp_path):
    """A worker elsewhere (file not visible, or a same-named file of another run) ships the tile."""
    net, x = _mlp(), _x(12)
    plan = tile_jobs.TilePlan(12, 12, 6, True, "trace", 1, torch.float64)
    store = out_of_core.TileStore(tmp_path / "k.npy", plan, "f")
    other = out_of_core.TileFile(store.path, plan, writer="another-run")
    assert store.file.visible() and not other.visible()
    problem = ntk_api._checked_problem(net, None, None, None, None, "auto")
    eng = ntk_api._engine("jacobian", problem, "trace", None)
    i, j, blk = ntk_dask._tile_task(eng, x, x, plan, 1, 0, "tok", other)
    assert (i, j) == (1, 0) and (blk - lazylab.ntk(net, x)[6:, :6]).abs().max() < 1e-12
    assert ntk_dask._tile_task(eng, x, x, plan, 1, 0, "tok", store.file)[2] is None
    ntk_dask._drop("tok")


def test_model_and_inputs_are_scattered_once(client, monkeypatch):
    """Tasks receive futures of the scattered engine/inputs: one scatter per call, not per tile."""
    calls = []
    real = distributed.Client.scatter

    def counting(self, data, *a, **kw):
        calls.append(len(data) if isinstance(data, list) else 1)
        return real(self, data, *a, **kw)

    monkeypatch.setattr(distributed.Client, "scatter", counting)
    net, x = _mlp(), _x(40)
    lazylab.ntk(net, x, client=client, block_size=5)  # 36 tasks
    assert calls == [2]  # [engine, x1] once


def test_bad_client():
    net, x = _mlp(), _x(4)
    with pytest.raises(TypeError, match="client must be"):
        lazylab.ntk(net, x, client=object())
    with pytest.raises(ValueError, match="dask://HOST:PORT"):
        lazylab.ntk(net, x, client="dask://nohostport")
    with pytest.raises(ValueError, match="positive number of workers"):
        lazylab.ntk(net, x, client=0)


def test_core_import_does_not_need_dask():
    code = ("import sys, torch, lazylab\n"
            "lazylab.ntk(lazylab.MLP([3, 4, 1]), torch.randn(5, 3), out=sys.argv[1])\n"
            "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'\n")
    with __import__("tempfile").TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", code, os.path.join(d, "k.npy")], check=True)


def test_dask_address_string(client):
    """``client="dask://HOST:PORT"``: a new connection to a running scheduler (the fixture's)."""
    address = client.scheduler.address.replace("tcp://", "dask://")
    net, x = _mlp(), _x(20)
    k = lazylab.ntk(net, x, client=address, block_size=8)
    assert (k - lazylab.ntk(net, x)).abs().max() < 1e-12


class SlowNet(nn.Module):
    """An MLP whose forward sleeps, so tiles take long enough to kill a worker mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return self.net(x)


def test_killed_worker_costs_only_its_tiles(client, monkeypatch):
    net, x = SlowNet(), _x(32)
    ref = lazylab.ntk(net.net, x)
    first = threading.Event()
    real_mark = out_of_core.ShmSink.mark

    def mark(self, *a):
        real_mark(self, *a)
        first.set()

    monkeypatch.setattr(out_of_core.ShmSink, "mark", mark)
    result = {}

    def run():
        result["k"] = lazylab.ntk(net, x, client=client, block_size=4, method="ntvp")  # 36 tasks

    with distributed.get_task_stream(client) as ts:
        th = threading.Thread(target=run)
        th.start()
        assert first.wait(120)
        busy = [w for w, keys in client.processing().items() if keys]
        victim = busy[0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        th.join(300)
    assert not th.is_alive()
    assert victim not in client.scheduler_info()["workers"]  # that worker really died
    assert (result["k"] - ref).abs().max() < 1e-12
    runs = [t for t in ts.data if str(t["key"]).startswith("lazylab-ntk-")]
    # only tiles in flight on, or finished but not yet gathered from, the dead worker are rerun
    print(f"tile tasks run for 36 tiles with one worker killed: {len(runs)}")
    assert 36 <= len(runs) <= 36 + 6



def test_tile_tasks_prefer_contiguous_runs_per_worker(client):
    """Row-major tile tasks go to workers in contiguous equal runs (fewer row tiles per worker)."""
    where = ntk_dask._placement(client, 10)
    names = [w[0] for w in where]
    assert names[:5] == [names[0]] * 5 and names[5:] == [names[5]] * 5 and names[0] != names[5]


def test_local_cluster_workers_run_quiet(client):
    """The workers of ``local_cluster`` got its QUIET settings (no 10 ms stack sampling, slow
    ticks), and no MALLOC_TRIM_THRESHOLD_ from the nanny."""
    import dask

    def settings() -> tuple:
        return (dask.config.get("distributed.worker.profile.enabled"),
                dask.config.get("distributed.admin.tick.interval"),
                dask.config.get("distributed.worker.memory.monitor-interval"),
                os.environ.get("MALLOC_TRIM_THRESHOLD_"))

    got = client.run(settings)
    assert len(got) == 2
    assert set(got.values()) == {(False, "1s", "1s", None)}
