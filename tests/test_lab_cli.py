"""Tests of the `lazylab` CLI (lazylab.lab.cli): end to end, report rebuild, kill + resume,
and bad input that must leave an existing store untouched."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lazylab.lab import registry as reg
from lazylab.lab.cli import main
from lazylab.lab.registry import list_experiments
from lazylab.lab.store import load_results

SMALL = ["--set", "steps=20", "--set", "m=16", "--set", "n_train=16", "--set", "n_test=32",
         "--set", "n_track=3", "--no-progress"]

TWO_CELLS = [*SMALL, "--sweep", "alpha=1", "--sweep", "seed=0,1"]

# An experiment outside the package (found through LAZYLAB_EXPERIMENTS) that logs every cell
# START to a file, so a test can tell whether a cell was computed twice.
PLUGIN = textwrap.dedent('''
    import os, time
    from dataclasses import dataclass
    import torch
    from lazylab.lab.registry import Experiment, Preset, Report, Check, register

    @dataclass
    class Cfg:
        seed: int = 0
        x: int = 0
        sleep: float = 0.0
        log_dir: str = ""

    def run_cell(cfg, ctx):
        if cfg.log_dir:
            with open(os.path.join(cfg.log_dir, f"start-x{cfg.x}.log"), "a") as fh:
                fh.write(f"{os.getpid()}\\n")
        time.sleep(cfg.sleep)
        noise = torch.rand(3)  # seeded by the lab with cfg.seed
        return [{"step": s, "value": cfg.x * 10 + s + float(noise[s])} for s in range(3)]

    def report(df, cfg):
        m = float(df["value"].mean())
        return Report({"mean": m}, [Check("mean positive", m, "> 0", m > 0)], {})

    register(Experiment("lab-counter", "counts cell starts (test)", Cfg,
                        {"quick": Preset(sweep={"x": [0, 1, 2, 3, 4, 5]}), "paper": Preset()},
                        run_cell, report))
''')


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """The counter experiment, registered in this process and (via the environment) in
    subprocesses."""
    (tmp_path / "lab_counter_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), "LAZYLAB_EXPERIMENTS": "lab_counter_plugin"}
    monkeypatch.syspath_prepend(str(tmp_path))
    list_experiments()
    importlib.import_module("lab_counter_plugin")
    yield env
    reg._REGISTRY.pop("lab-counter", None)
    sys.modules.pop("lab_counter_plugin", None)


def _cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "lazylab.lab.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _done_cells(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM cells WHERE status='done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_sigkill_midway_then_resume(plugin_env, tmp_path, capsys):
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    args = ["run", "lab-counter", "--set", "sleep=0.4", "--set", f"log_dir={logs}",
            "--out", str(out), "--no-progress"]
    proc = _cli(args, plugin_env)
    db = out / "results.sqlite"
    deadline = time.time() + 120
    while _done_cells(db) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_done = _done_cells(db)
    assert 1 <= killed_done < 6, f"kill came too late/early: {killed_done} cells done"
    con = sqlite3.connect(db)
    before = {cid: (st, fin, pid) for cid, st, fin, pid in con.execute(
        "SELECT cell_id, status, finished, pid FROM cells")}
    recs_before = con.execute("SELECT cell_id, rec_idx, data_json FROM records").fetchall()
    con.close()
    finished = {cid for cid, v in before.items() if v[0] == "done"}
    assert len(finished) == killed_done
    # whole cells only: each finished cell has all its 3 records, the others none
    assert sorted(r[0] for r in recs_before) == sorted(c for c in finished for _ in range(3))

    # without --resume the folder is refused
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "already exists" in err

    assert main([*args, "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert f"{killed_done} already done, {6 - killed_done} to run" in stdout
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'}"

    con = sqlite3.connect(db)
    after = {cid: (st, fin, pid) for cid, st, fin, pid in con.execute(
        "SELECT cell_id, status, finished, pid FROM cells")}
    rows = con.execute("SELECT cell_id, rec_idx, data_json FROM records").fetchall()
    con.close()
    assert set(after) == set(before) and len(after) == 6
    assert all(v[0] == "done" for v in after.values())
    assert {v[2] for cid, v in after.items() if cid not in finished} == {os.getpid()}
    # every cell exactly once (3 records each, no duplicates)
    assert len(rows) == 18 and len({(r[0], r[1]) for r in rows}) == 18
    # finished cells were not recomputed: same finish time, process and records...
    for cid in finished:
        assert after[cid] == before[cid]
    assert {r for r in rows if r[0] in finished} == set(recs_before)
    # ...and each of them was started exactly once (the start log counts every start)
    df = load_results(out)
    assert len(df) == 18 and df.groupby("x").size().tolist() == [3] * 6
    done_x = set(df[df.cell_id.isin(finished)].x)
    for x in range(6):
        starts = (logs / f"start-x{x}.log").read_text().split()
        if x in done_x:
            assert len(starts) == 1, f"finished cell x={x} was recomputed"
        else:  # the cell in flight at the kill may have started twice, no other
            assert 1 <= len(starts) <= 2
    assert json.loads((out / "summary.json").read_text())["checks"][0]["passed"] is True


def test_run_end_to_end_and_report_rebuild(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["run", "regimes-demo", *SMALL, "--sweep", "alpha=1,8", "--sweep", "seed=3",
               "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'}"
    assert "cell 2/2 alpha=8.0 seed=3" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml", "environment.json", "figures", "report.md",
                     "results.sqlite", "summary.json"]
    assert (out / "figures" / "regimes.png").read_bytes()[:4] == b"\x89PNG"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["experiment"] == "regimes-demo" and cfg["preset"] == "quick"
    assert cfg["config"]["steps"] == 20 and cfg["sweep"] == {"alpha": [1.0, 8.0], "seed": [3]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "regimes-demo" and summary["preset"] == "quick"
    assert summary["checks"] and set(summary["checks"][0]) >= {"name", "value", "target",
                                                                "passed"}
    assert "rel_weight_change@alpha=8" in summary["metrics"]
    env = json.loads((out / "environment.json").read_text())
    assert env["device"] == "cpu" and env["seeds"] == [3] and env["packages"]["torch"]
    assert env["threads_per_cell"] == 1
    assert env["command"][:3] == ["lazylab", "run", "regimes-demo"]
    md = (out / "report.md").read_text()
    assert "![regimes](figures/regimes.png)" in md and ("✔" in md or "✘" in md)
    assert "| alpha |" in md and "## Notes" in md

    # `lazylab report DIR` rebuilds every output from the store alone
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    (out / "figures" / "regimes.png").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.md'}"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "report.md").read_text() == md
    assert (out / "figures" / "regimes.png").exists()


def test_list_and_help(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "regimes-demo" in out and "presets: quick, paper" in out
    with pytest.raises(SystemExit) as ei:
        main(["run", "--help"])
    assert ei.value.code == 0
    h = capsys.readouterr().out
    for flag in ("--preset", "--set", "--sweep", "--out", "--executor", "--workers", "--resume",
                 "--device", "--no-progress", "dask://HOST:PORT", "results.sqlite"):
        assert flag in h


def _snapshot(d: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns,
                                    hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("existing") / "run"
    assert main(["run", "regimes-demo", *TWO_CELLS, "--out", str(out)]) == 0
    return out


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("extra,expected", [
    (["--set", "nope=1"], ["unknown config key 'nope'", "valid keys", "alpha", "steps"]),
    (["--set", "steps=many"], ["'steps'", "int", "'many'"]),
    (["--sweep", "alpha="], ["empty sweep", "alpha"]),
    (["--sweep", "lr=0.1,x"], ["'lr'", "float"]),
    (["--preset", "huge"], ["no preset 'huge'", "quick, paper"]),
    (["--set", "steps=21"], ["another config", "steps: stored 20 != requested 21"]),
    (["--sweep", "seed=0,1,2"], ["another config", "sweep"]),
    (["--executor", "dask://127.0.0.1:PORT"], ["127.0.0.1:PORT"]),
])
def test_bad_input_errors_and_nothing_written(existing_run, capsys, extra, expected):
    before = _snapshot(existing_run)
    port = str(_closed_port())
    extra = [e.replace("PORT", port) for e in extra]
    t0 = time.perf_counter()
    rc = main(["run", "regimes-demo", *TWO_CELLS, *extra,
               "--out", str(existing_run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    assert time.perf_counter() - t0 < 30
    for e in expected:
        assert e.replace("PORT", port) in err, err
    assert _snapshot(existing_run) == before


def test_unknown_experiment_and_other_experiment_folder(existing_run, plugin_env, capsys):
    before = _snapshot(existing_run)
    assert main(["run", "no-such-exp", "--out", str(existing_run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-exp'" in err and "regimes-demo" in err
    # a different experiment resumed into this folder
    assert main(["run", "lab-counter", "--out", str(existing_run), "--resume",
                 "--no-progress"]) == 2
    assert "holds experiment 'regimes-demo', not 'lab-counter'" in capsys.readouterr().err
    assert _snapshot(existing_run) == before


def test_resume_of_finished_run_runs_nothing(existing_run, capsys):
    before = load_results(existing_run)
    assert main(["run", "regimes-demo", *TWO_CELLS, "--out", str(existing_run), "--resume"]) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out
    assert load_results(existing_run).equals(before)


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["run", "regimes-demo", *TWO_CELLS, "--device", "cuda",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# --- report settings: outside the cell ids, re-judged by `lazylab report DIR --set` -------------

TOL_PLUGIN = textwrap.dedent('''
    import os
    from dataclasses import dataclass
    from lazylab.lab.registry import Experiment, Preset, Report, check, register

    @dataclass
    class Cfg:
        seed: int = 0
        x: int = 1
        tol: float = 0.5          # report setting
        log_dir: str = ""

    def run_cell(cfg, ctx):
        if cfg.log_dir:
            with open(os.path.join(cfg.log_dir, "starts.log"), "a") as fh:
                fh.write(f"{cfg.seed}\\n")
        return [{"value": cfg.x + 0.1 * cfg.seed}]

    def report(df, cfg):
        c = check("value near 1", None, 1.0, atol=cfg.tol, seeds=df["value"], source="test")
        return Report({}, [c], {})

    register(Experiment("lab-tol", "report-setting test", Cfg,
                        {"quick": Preset(sweep={"seed": [0, 1, 2]}), "paper": Preset()},
                        run_cell, report, report_settings=("tol",)))
''')


@pytest.fixture
def tol_plugin(tmp_path, monkeypatch):
    (tmp_path / "lab_tol_plugin.py").write_text(TOL_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    list_experiments()
    importlib.import_module("lab_tol_plugin")
    yield
    reg._REGISTRY.pop("lab-tol", None)
    sys.modules.pop("lab_tol_plugin", None)


def test_report_set_rejudges_without_recomputing(tol_plugin, tmp_path, capsys):
    out, logs = tmp_path / "r", tmp_path / "logs"
    logs.mkdir()
    assert main(["run", "lab-tol", "--set", "tol=0.05", "--set", f"log_dir={logs}",
                 "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["claims"] == {"total": 1, "passed": 0, "not_reproduced": ["value near 1"]}
    assert not s["all_claims_reproduced"] and s["report_settings"] == {"tol": 0.05}
    c = s["checks"][0]  # values 1.0, 1.1, 1.2: mean 1.1, sd 0.1 over 3 seeds
    assert c["n"] == 3 and abs(c["mean"] - 1.1) < 1e-12 and abs(c["sd"] - 0.1) < 1e-12
    assert c["verdict"] == "not reproduced" and c["kind"] == "claim"
    assert "## Claims" in (out / "report.md").read_text()
    db_before = (out / "results.sqlite").read_bytes()
    capsys.readouterr()
    assert main(["report", str(out), "--set", "tol=0.2"]) == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["all_claims_reproduced"] and s2["overridden"] == {"tol": 0.2}
    assert "Re-judged" in (out / "report.md").read_text()
    assert (out / "results.sqlite").read_bytes() == db_before  # the store is not touched
    assert (logs / "starts.log").read_text().split() == ["0", "1", "2"]  # nothing recomputed
    # a key that changes the cells is refused, naming the report settings
    assert main(["report", str(out), "--set", "x=2"]) == 2
    assert "not a report setting" in capsys.readouterr().err
    # sweeping a report setting is refused before anything runs
    assert main(["run", "lab-tol", "--sweep", "tol=0.1,0.2", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 2
    assert "only change how the report judges" in capsys.readouterr().err
    # resume with another tolerance: no cell re-runs, the report uses the new value
    assert main(["run", "lab-tol", "--set", "tol=0.3", "--set", f"log_dir={logs}", "--out",
                 str(out), "--resume", "--no-progress"]) == 0
    assert (logs / "starts.log").read_text().split() == ["0", "1", "2"]
    assert json.loads((out / "summary.json").read_text())["all_claims_reproduced"]


def test_cell_ids_leave_out_report_settings_and_old_stores_resume(tol_plugin, tmp_path):
    from lazylab.lab.config import config_hash
    from lazylab.lab.runner import plan

    _, _, a = plan("lab-tol", set=["tol=0.1"])
    _, _, b = plan("lab-tol", set=["tol=0.9"])
    _, _, c = plan("lab-tol", set=["x=2"])
    assert [x.id for x in a] == [x.id for x in b]
    assert not set(x.id for x in a) & set(x.id for x in c)
    # a store written before report settings left the ids (ids = hash of every key) still
    # resumes: its finished cells are recognised, the missing one runs under its old id
    out, logs = tmp_path / "old", tmp_path / "logs"
    logs.mkdir()
    assert main(["run", "lab-tol", "--set", f"log_dir={logs}", "--out", str(out),
                 "--no-progress"]) == 0
    con = sqlite3.connect(out / "results.sqlite")
    for cid, cfg_json in con.execute("SELECT cell_id, config_json FROM cells").fetchall():
        old = config_hash(json.loads(cfg_json))
        con.execute("UPDATE records SET cell_id=? WHERE cell_id=?", (old, cid))
        con.execute("UPDATE cells SET cell_id=? WHERE cell_id=?", (old, cid))
    con.execute("DELETE FROM records WHERE cell_id=(SELECT cell_id FROM cells WHERE idx=2)")
    con.execute("UPDATE cells SET status='pending' WHERE idx=2")
    con.commit()
    con.close()
    assert main(["run", "lab-tol", "--set", f"log_dir={logs}", "--out", str(out), "--resume",
                 "--no-progress"]) == 0
    assert (logs / "starts.log").read_text().split() == ["0", "1", "2", "2"]
    assert len(load_results(out)) == 3
