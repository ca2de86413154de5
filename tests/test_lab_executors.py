"""Tests of lazylab.lab.executors: same records from every executor, errors, fast failure."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from lazylab.lab import registry as reg
from lazylab.lab.executors import (
    CellError,
    LocalExecutor,
    execute_cell,
    make_executor,
    validate_records,
)
from lazylab.lab.registry import Experiment, Preset, Report, register
from lazylab.lab.runner import run_experiment
from lazylab.lab.store import load_results

# a small regimes-demo sweep: 4 cells of real training (lazy two-layer nets)
SETS = ["steps=30", "m=32", "n_train=32", "n_test=64", "n_track=4"]
SWEEPS = ["alpha=1,16", "seed=0,1"]


def _run(out, **kw):
    run_experiment("regimes-demo", set=SETS, sweep=SWEEPS, out=out, progress=False, echo=False,
                   **kw)
    df = load_results(out)
    return df.sort_values(["cell_id", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("inproc") / "run")


def _assert_identical(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) == 4 * 4  # 4 cells x 4 tracked steps (n_track=4)
    assert a["cell_id"].tolist() == b["cell_id"].tolist()
    for col in ("train_loss", "test_loss", "rel_weight_change"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
    pd.testing.assert_frame_equal(a, b)


def test_inprocess_records_are_reproducible_and_meaningful(inprocess, tmp_path):
    df = inprocess
    assert df["cell_id"].nunique() == 4
    last = df.loc[df.groupby("cell_id")["step"].idxmax()].groupby("alpha")
    rel = last["rel_weight_change"].mean()
    # lazy scaling: the weights move ~16x less at alpha=16 than at alpha=1
    assert 8 < rel[1.0] / rel[16.0] < 32
    # same seeds -> the same numbers in a second in-process run
    _assert_identical(df, _run(tmp_path / "again"))


@pytest.mark.slow  # ~10 s on 2 busy cores (two spawned interpreters import torch)
def test_local_two_workers_match_inprocess(inprocess, tmp_path):
    _assert_identical(inprocess, _run(tmp_path / "pool", workers=2))


def test_dask_localcluster_two_workers_match_inprocess(inprocess, tmp_path):
    df = _run(tmp_path / "dask", executor="dask", workers=2)
    _assert_identical(inprocess, df)
    # the work really ran in other processes
    from lazylab.lab.store import Store

    with Store.open_readonly(tmp_path / "dask") as st:
        pids = {c["pid"] for c in st.cells()}
    import os

    assert os.getpid() not in pids


def test_unreachable_dask_address_fails_fast_and_names_it(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    addr = f"dask://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as ei:
        make_executor(addr, timeout=2)
    assert time.perf_counter() - t0 < 15
    assert f"127.0.0.1:{port}" in str(ei.value)


def test_make_executor_rejects_bad_specs():
    with pytest.raises(ValueError, match="dask://HOST:PORT"):
        make_executor("slurm")
    with pytest.raises(ValueError, match="HOST:PORT"):
        make_executor("dask://nohost")
    with pytest.raises(ValueError, match="--workers"):
        make_executor("local", workers=0)


def test_validate_records():
    import torch

    recs = validate_records([{"step": 1, "a": np.float64(0.5), "b": torch.tensor(2.0),
                              "c": None, "d": "s", "e": True}], "x")
    assert recs == [{"step": 1, "a": 0.5, "b": 2.0, "c": None, "d": "s", "e": True}]
    assert type(recs[0]["a"]) is float
    with pytest.raises(TypeError, match="list of dicts"):
        validate_records({"a": 1}, "x")
    with pytest.raises(TypeError, match="key 'v'"):
        validate_records([{"v": [1, 2]}], "x")
    with pytest.raises(TypeError, match="key 'v'"):
        validate_records([{"v": torch.ones(3)}], "x")
    with pytest.raises(TypeError, match="'step' must be an int"):
        validate_records([{"step": 1.5}], "x")


@dataclass
class BoomCfg:
    seed: int = 0
    x: int = 0


def _boom_cell(cfg, ctx):
    if cfg.x == 2:
        raise ZeroDivisionError("boom at x=2")
    return [{"x": cfg.x, "r": float(np.random.rand())}]


@pytest.fixture
def boom():
    exp = register(Experiment("t-exec-boom", "fails on x=2", BoomCfg,
                              {"quick": Preset(sweep={"x": [0, 1, 2, 3]}), "paper": Preset()},
                              _boom_cell, lambda df, c: Report({}, [], {})))
    yield exp
    reg._REGISTRY.pop("t-exec-boom", None)


def test_cell_error_names_cell_and_keeps_finished_cells(boom, tmp_path):
    with pytest.raises(CellError, match=r"x=2.*ZeroDivisionError: boom at x=2"):
        run_experiment("t-exec-boom", out=tmp_path / "r", progress=False, echo=False)
    with pytest.raises(Exception):  # noqa: B017 (only to show nothing else got stored)
        load_results(tmp_path / "missing")
    from lazylab.lab.store import Store

    with Store.open_readonly(tmp_path / "r") as st:
        status = {c["params"]["x"]: c["status"] for c in st.cells()}
    assert status == {0: "done", 1: "done", 2: "pending", 3: "pending"}


def test_execute_cell_seeds_global_rngs(boom):
    a = execute_cell("t-exec-boom", __name__, {"seed": 5, "x": 0}, "cpu", False, 1)
    b = execute_cell("t-exec-boom", __name__, {"seed": 5, "x": 0}, "cpu", False, 1)
    c = execute_cell("t-exec-boom", __name__, {"seed": 6, "x": 0}, "cpu", False, 1)
    assert a["records"] == b["records"] != c["records"]
    assert LocalExecutor(1).name == "local"
