"""Nothing silent: every wrong setting, extreme value, crash and kill ends in a clear one-line
message and a clean state (issue "Nothing silent"). One test per case; each asserts the exact
message and that no finished cell or file is lost."""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazylab
from lazylab.checks import alpha_range, check_alpha
from lazylab.lab import registry as reg
from lazylab.lab.cli import main
from lazylab.lab.config import make_config, resolve
from lazylab.lab.registry import Experiment, Preset, Report, list_experiments, register
from lazylab.lab.runner import run_experiment
from lazylab.lab.store import Store, load_results

SMALL = ["--set", "steps=5", "--set", "m=8", "--set", "n_train=8", "--set", "n_test=8",
         "--set", "n_track=2", "--no-progress"]
ONE_CELL = [*SMALL, "--sweep", "alpha=1", "--sweep", "seed=0"]
RANGE = "[5.42e-20, 4.5e+11] for float32 weights computed in float64"


def _snapshot(d: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns,
                                    hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


def _err_line(capsys) -> str:
    """The CLI's stderr, asserted to be ONE line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    assert main(["run", "regimes-demo", *ONE_CELL, "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------ 1. --set on a swept key
def test_set_on_swept_key_is_an_error_naming_sweep(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "regimes-demo", "--set", "alpha=0", "--out", str(out)]) == 2
    assert _err_line(capsys) == (
        "lazylab: error: --set alpha=0: 'alpha' is swept by the preset (0.25, 1.0, 4.0, 16.0, "
        "64.0), which would override it; use --sweep alpha=0 to replace the preset's sweep")
    assert not out.exists()
    with pytest.raises(ValueError, match=r"--set alpha=-1.0: 'alpha' is swept by the preset"):
        run_experiment("regimes-demo", set={"alpha": -1.0}, out=tmp_path / "api", echo=False)
    assert not (tmp_path / "api").exists()
    with pytest.raises(ValueError, match=r"'seed' is also given to --sweep; give it once"):
        resolve(reg.get_experiment("regimes-demo").config, None, ["seed=1"], ["seed=1,2"])


# ------------------------------------------------------------------ 2. extreme alpha
def test_alpha_outside_safe_range_is_refused_naming_the_range(tmp_path, capsys):
    net = torch.nn.Linear(3, 1)
    for a in (1e12, 1e15, 1e30, 1e200):
        with pytest.raises(ValueError) as ei:
            lazylab.lazy(net, a)
        assert str(ei.value) == (f"alpha={a:g} is outside the safe range {RANGE}: beyond it the "
                                 "training update no longer moves the weights (see "
                                 "lazylab.checks.alpha_range)")
    with pytest.raises(ValueError, match=r"alpha=1000 is outside the safe range \[5.42e-20, 839\]"):
        lazylab.lazy(net, 1e3, compute_dtype=torch.float32)
    out = tmp_path / "r"
    assert main(["run", "regimes-demo", *SMALL, "--sweep", "alpha=1,1e30", "--out", str(out)]) == 2
    assert _err_line(capsys) == (
        "lazylab: error: config key 'alpha' (swept; cell alpha=1e+30 seed=0): alpha=1e+30 is "
        f"outside the safe range {RANGE}: beyond it the training update no longer moves the "
        "weights (see lazylab.checks.alpha_range)")
    assert not out.exists()


def test_alpha_range_values_follow_the_dtypes():
    eps64 = torch.finfo(torch.float64).eps
    lo, hi = alpha_range(torch.float32)
    assert hi == pytest.approx(1e-4 / eps64) and lo == pytest.approx(torch.finfo(torch.float32).max ** -0.5)
    assert alpha_range(torch.float32, torch.float32)[1] == pytest.approx(1e-4 / 2**-23)
    assert alpha_range(torch.float16)[1] == pytest.approx(torch.finfo(torch.float16).tiny ** -0.5)
    assert check_alpha(hi) == hi  # the boundary itself is accepted...
    with pytest.raises(ValueError, match="outside the safe range"):
        check_alpha(hi * 1.0001)  # ...just beyond it is not
    with pytest.raises(ValueError, match="outside the safe range"):
        check_alpha(lo / 2)


def _train(model, X, y, scale, steps=20, lr=0.05):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (scale * ((model(X) - y) ** 2).mean()).backward()
        opt.step()
    with torch.no_grad():
        return model(X).double()


def test_training_at_alpha_max_still_follows_the_tangent_model(monkeypatch):
    """The bound's derivation, measured: at alpha_max the lazy model trained by GD equals the
    centered linearized model (its alpha -> inf limit, trained in float64) to ~1e-4 (the design
    tolerance; asserted 1e-3); beyond the range (the check bypassed) the displacement is lost:
    26 % off at 1e15, no motion at 1e18 (negative control)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    X = torch.randn(16, 3)
    y = torch.sin(X.sum(1, keepdim=True))
    ref = _train(lazylab.linearize(copy.deepcopy(net).double(), center=True), X.double(),
                 y.double(), 1.0)
    hi = alpha_range()[1]

    def gap(a: float) -> float:
        lz = lazylab.lazy(net, a)
        return float((_train(lz, X, y, lz.loss_scale) - ref).norm() / ref.norm())

    assert gap(hi) < 1e-3
    monkeypatch.setattr("lazylab.regimes.check_alpha", lambda a, *args, **kw: float(a))
    assert gap(1e15) > 0.05 and gap(1e18) > 0.5


def test_diagnose_refuses_extreme_alpha_in_one_line(tmp_path, capsys):
    out = tmp_path / "d"
    rc = main(["diagnose", "--model", "two_layer", "--model-set", "m=8", "--data", "teacher",
               "--steps", "3", "--alpha", "1e200", "--out", str(out)])
    assert rc == 2
    assert _err_line(capsys) == (f"lazylab: error: alpha=1e+200 is outside the safe range {RANGE}: "
                                 "beyond it the training update no longer moves the weights (see "
                                 "lazylab.checks.alpha_range)")
    assert not out.exists()


# ------------------------------------------------------------------ 3. bad values before any cell
@pytest.mark.parametrize("extra,message", [
    (["--set", "lr=-1"], "config key 'lr': must be > 0, got -1.0"),
    (["--set", "steps=-3"], "config key 'steps': must be > 0, got -3"),
    (["--set", "m=0"], "config key 'm': must be > 0, got 0"),
    (["--set", "steps=2.5"], "config key 'steps': expected a value of type int (a whole number), "
                             "got '2.5'"),
    (["--set", "activation=gelu"], "config key 'activation': expected one of ['erf', 'identity', "
                                   "'quadratic', 'relu', 'softplus', 'tanh'], got 'gelu'"),
    (["--sweep", "lr=0.1,nan"], "config key 'lr' (swept; cell alpha=1.0 seed=0 lr=nan): must be "
                                "a finite number > 0, got nan"),
])
def test_bad_values_are_refused_before_anything_is_written(finished_run, tmp_path, capsys, extra,
                                                           message):
    new = tmp_path / "new"
    assert main(["run", "regimes-demo", *ONE_CELL, *extra, "--out", str(new)]) == 2
    assert _err_line(capsys) == f"lazylab: error: {message}"
    assert not new.exists()
    before = _snapshot(finished_run)  # into an existing run with --resume: untouched
    assert main(["run", "regimes-demo", *ONE_CELL, *extra, "--out", str(finished_run),
                 "--resume"]) == 2
    assert _err_line(capsys) == f"lazylab: error: {message}"
    assert _snapshot(finished_run) == before


def test_missing_data_dir_is_refused_before_the_run(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["run", "chizat-cnn", "--set", "dataset=cifar10", "--out", str(out)]) == 2
    assert _err_line(capsys) == (
        "lazylab: error: config key 'data_dir': the folder holding cifar-10-batches-py/ is needed "
        "for the cifar10 dataset (--set data_dir=/path/to/folder)")
    assert main(["run", "chizat-cnn", "--set", "dataset=cifar10", "--set",
                 f"data_dir={tmp_path}", "--out", str(out)]) == 2
    assert _err_line(capsys).startswith(
        f"lazylab: error: config key 'data_dir': CIFAR-10 not found: "
        f"{tmp_path / 'cifar-10-batches-py'} is missing data_batch_1")
    assert main(["run", "wang-lazy-attack", "--preset", "paper", "--set", f"data_dir={tmp_path}",
                 "--out", str(out)]) == 2
    assert _err_line(capsys).startswith(
        f"lazylab: error: config key 'data_dir': MNIST not found in {tmp_path}: missing "
        "train-images-idx3-ubyte")
    assert not out.exists()


def test_every_preset_of_every_experiment_passes_its_rules():
    from lazylab.lab.runner import plan

    needs_data = {("chizat-cnn", "paper"), ("chizat-cnn", "paper-wide"),
                  ("loo-ntk-evolution", "paper"), ("wang-lazy-attack", "paper")}
    for exp in list_experiments():
        for preset in exp.presets:
            if (exp.name, preset) in needs_data:
                with pytest.raises(ValueError, match="config key 'data_dir'"):
                    plan(exp.name, preset)
            else:
                plan(exp.name, preset)


# ------------------------------------------------------------------ 4. diagnose --out
DIAG = ["diagnose", "--model", "two_layer", "--model-set", "m=8", "--data", "teacher",
        "--data-set", "n=16", "--steps", "3", "--probe", "4", "--snapshots", "2", "--no-kappa"]


def test_diagnose_never_overwrites_a_report(tmp_path, capsys):
    out = tmp_path / "d"
    assert main([*DIAG, "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main([*DIAG, "--lr", "0.2", "--out", str(out)]) == 2
    assert _err_line(capsys) == (
        f"lazylab: error: --out {out} already holds a report (report.md); choose a new --out (a "
        "previous report is never overwritten), or add --resume to keep it")
    assert main([*DIAG, "--out", str(out), "--resume"]) == 0
    assert capsys.readouterr().out.strip() == (f"report: {out / 'report.md'} (already complete; "
                                               "nothing recomputed)")
    assert _snapshot(out) == before
    afile = tmp_path / "a_file"
    afile.write_text("x")
    t0 = time.perf_counter()
    assert main([*DIAG, "--steps", "100000", "--out", str(afile)]) == 2  # refused before training
    assert time.perf_counter() - t0 < 20
    assert _err_line(capsys) == (f"lazylab: error: --out {afile} exists and is not a folder; "
                                 "choose another --out")
    assert main([*DIAG, "--steps", "100000", "--out", str(afile / "sub")]) == 2
    assert _err_line(capsys) == (f"lazylab: error: --out {afile / 'sub'}: {afile} is a file, not a "
                                 "folder; choose another --out")


# ------------------------------------------------------------------ 5. workers: kill and death
PLUGIN = textwrap.dedent('''
    import os, signal, time
    from dataclasses import dataclass
    from lazylab.lab.registry import Experiment, Preset, Report, Check, register

    @dataclass
    class Cfg:
        seed: int = 0
        x: int = 0
        sleep: float = 0.0
        die_once: int = -1      # this x kills its worker on the first attempt
        die_always: int = -1    # this x kills its worker on every attempt
        log_dir: str = ""

    def run_cell(cfg, ctx):
        mark = os.path.join(cfg.log_dir, f"died-x{cfg.x}")
        if cfg.x == cfg.die_always or (cfg.x == cfg.die_once and not os.path.exists(mark)):
            open(mark, "a").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(cfg.sleep)
        return [{"step": 0, "value": float(cfg.x)}]

    def report(df, cfg):
        return Report({"n": float(len(df))}, [Check("some cells", len(df), "> 0", len(df) > 0)], {})

    register(Experiment("rel-workers", "workers that die (test)", Cfg,
                        {"quick": Preset(sweep={"x": [0, 1, 2, 3, 4, 5]}), "paper": Preset()},
                        run_cell, report))
''')


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    (tmp_path / "rel_workers_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), "LAZYLAB_EXPERIMENTS": "rel_workers_plugin"}
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    monkeypatch.setenv("LAZYLAB_EXPERIMENTS", "rel_workers_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    list_experiments()
    importlib.import_module("rel_workers_plugin")
    yield env
    reg._REGISTRY.pop("rel-workers", None)
    sys.modules.pop("rel_workers_plugin", None)


def _descendants(pid: int) -> set[int]:
    """pids of every live descendant of ``pid`` (children of children too), from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_with_workers_leaves_no_process(plugin_env, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazylab.lab.cli", "run", "rel-workers", "--workers", "2",
         "--set", "sleep=60", "--set", f"log_dir={logs}", "--out", str(out), "--no-progress"],
        env=plugin_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    kids: set[int] = set()
    while time.time() < deadline and proc.poll() is None:  # until both workers run a cell
        kids = _descendants(proc.pid)
        if len(kids) >= 3:  # 2 pool workers + the resource tracker
            break
        time.sleep(0.2)
    assert len(kids) >= 3, f"workers did not start: {kids}"
    time.sleep(1.0)
    kids |= _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t_end = time.time() + 10
    while time.time() < t_end and any(_alive(p) for p in kids):
        time.sleep(0.1)
    survivors = [p for p in kids if _alive(p)]
    for p in survivors:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert survivors == [], f"processes of the killed run still alive after 10 s: {survivors}"


def test_dead_worker_cell_is_retried_then_reported_failed(plugin_env, tmp_path, capsys):
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    args = ["run", "rel-workers", "--workers", "2", "--set", "die_once=1", "--set",
            "die_always=3", "--set", f"log_dir={logs}", "--out", str(out), "--no-progress"]
    assert main(args) == 1
    err = _err_line(capsys)
    with Store.open_readonly(out) as st:
        status = {c["params"]["x"]: c["status"] for c in st.cells()}
        cid3 = next(c["cell_id"] for c in st.cells() if c["params"]["x"] == 3)
    assert err == (f"lazylab: error: 1 cell(s) failed: cell 4 (x=3, id {cid3}): its worker "
                   "process died twice (killed, or it crashed: out of memory, segfault); the other "
                   f"cells are stored in {out}; rerun the failed ones with --resume")
    # x=1 died once and succeeded on its retry; x=3 died twice; every other cell is stored
    assert status == {0: "done", 1: "done", 2: "done", 3: "failed", 4: "done", 5: "done"}
    assert sorted(load_results(out)["x"]) == [0, 1, 2, 4, 5]
    assert (out / "report.md").is_file()


# ------------------------------------------------------------------ 6. unreadable store
@pytest.mark.parametrize("damage,cause", [
    (lambda b: b[:3000], "DatabaseError: database disk image is malformed"),
    (lambda b: b"", "OperationalError: no such table: run"),
    (lambda b: b"not a database at all" * 10, "DatabaseError: file is not a database"),
])
def test_unreadable_store_is_a_one_line_error(finished_run, tmp_path, capsys, damage, cause):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(finished_run, bad)
    db = bad / "results.sqlite"
    db.write_bytes(damage(db.read_bytes()))
    before = _snapshot(bad)
    msg = (f"lazylab: error: {db} cannot be read as a lazylab result store ({cause}): the file is "
           "corrupt, truncated or empty; restore it from a backup, or move it away and run again "
           "with a new --out (its cells must be recomputed)")
    assert main(["report", str(bad)]) == 2
    assert _err_line(capsys) == msg
    assert main(["run", "regimes-demo", *ONE_CELL, "--out", str(bad), "--resume"]) == 2
    assert _err_line(capsys) == msg
    assert _snapshot(bad) == before


# ------------------------------------------------------------------ 7. NaN weights, 2.5 steps, keys
def _nan_net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        net[2].weight[0, 1] = float("nan")
    return net


@pytest.mark.parametrize("who,call", [
    ("ntk", lambda net, x: lazylab.ntk(net, x)),
    ("lazy", lambda net, x: lazylab.lazy(net, 2.0)),
    ("linearize", lambda net, x: lazylab.linearize(net)),
    ("train", lambda net, x: lazylab.train(net, (x, torch.zeros(5, 1)), steps=2)),
])
def test_nan_weights_are_an_error_naming_the_parameter(who, call):
    with pytest.raises(ValueError) as ei:
        call(_nan_net(), torch.randn(5, 3))
    assert str(ei.value) == (f"{who}: parameter '2.weight' contains NaN or inf values; "
                             "re-initialize the model or load finite weights")


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_integer_keys_accept_exactly_the_whole_numbers(f):
    """coerce(f, int) == int(f) iff f is a finite whole number; otherwise a TypeError naming the
    key (never a silent truncation: 2.5 is not 2)."""
    from lazylab.lab.config import coerce, parse_value

    if math.isfinite(f) and f.is_integer():
        assert coerce(f, int, "steps") == int(f) == parse_value(repr(f), int, "steps")
    else:
        for call in (lambda: coerce(f, int, "steps"), lambda: parse_value(repr(f), int, "steps")):
            with pytest.raises(TypeError, match=r"config key 'steps': expected a value of type int"):
                call()


def test_non_integer_steps_and_unknown_threshold_keys_are_refused():
    net, x = torch.nn.Linear(3, 1), torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"^steps must be an integer, got 2.5$"):
        lazylab.train(net, (x, torch.zeros(5, 1)), steps=2.5)
    with pytest.raises(ValueError, match=r"^epochs must be an integer, got 1.5$"):
        lazylab.train(net, (x, torch.zeros(5, 1)), epochs=1.5)
    with pytest.raises(ValueError) as ei:
        lazylab.diagnose(net, (x, torch.zeros(5, 1)), steps=2, thresholds={"lazy_kernell": 0.2})
    assert str(ei.value) == ("thresholds: unknown key(s) ['lazy_kernell']; known keys: "
                             "['feature_kernel', 'lazy_kernel', 'lazy_lin_gap']")


def test_integer_settings_of_diagnose_reject_fractions(tmp_path, capsys):
    assert main([*DIAG, "--model-set", "m=2.5", "--out", str(tmp_path / "a")]) == 2
    assert _err_line(capsys) == "lazylab: error: --model-set m must be an integer, got 2.5"
    assert main([*DIAG, "--data-set", "n=16.5", "--out", str(tmp_path / "a")]) == 2
    assert _err_line(capsys) == "lazylab: error: --data-set n must be an integer, got 16.5"
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------ 8. run-time settings
def test_threads_is_a_run_option_not_a_config_key(tmp_path):
    for name in ("chizat-rates", "chizat-scale", "chizat-trajectories", "chizat-width"):
        fields = reg.get_experiment(name).config_fields()
        assert "threads" not in fields, name
        # a store written when threads was a config key still loads (the key is dropped)
        cfg = make_config(reg.get_experiment(name).config, {"seed": 3, "threads": 1})
        assert cfg.seed == 3

    @dataclass
    class WithThreads:
        seed: int = 0
        threads: int = 1

    with pytest.raises(TypeError, match=r"config field\(s\) \['threads'\] are run-time settings"):
        register(Experiment("rel-threads", "bad", WithThreads,
                            {"quick": Preset(), "paper": Preset()}, lambda c, x: [],
                            lambda df, c: Report({}, [], {})))
    assert "rel-threads" not in reg._REGISTRY


def test_old_store_with_threads_key_reports_and_says_how_to_resume(tmp_path, capsys):
    """A chizat-rates store written when ``threads`` was a config key: ``lazylab report`` rebuilds
    it; ``--resume`` is refused with a message naming the key and the way out; nothing changes."""
    from lazylab.lab.runner import plan
    from lazylab.lab.sweep import Cell

    exp, resolved, cells = plan("chizat-rates", "quick")
    old_base = {"seed": 0, "threads": 1, **{k: v for k, v in resolved.base.items() if k != "seed"}}
    cell = cells[0]
    old_cell = Cell(0, "oldcell", cell.params, {**old_base, **cell.params})
    out = tmp_path / "old"
    st = Store.create(out, experiment=exp.name, preset="quick", config=old_base,
                      sweep=resolved.sweep, cells=[old_cell])
    st.write_cell("oldcell", [{"step": 0, "sup_w": 0.1}], started=0.0, finished=1.0)
    st.close()
    before = _snapshot(out)
    assert main(["run", "chizat-rates", "--out", str(out), "--resume"]) == 2
    err = _err_line(capsys)
    assert ("threads: stored 1 as a config key, which is now the run option --threads (its cell "
            "ids hold the old key: finish it with the lazylab version that wrote it; `lazylab "
            "report` still reads it)") in err
    assert _snapshot(out) == before
    assert len(load_results(out)) == 1


def test_version_flag_prints_the_version(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"lazylab {lazylab.__version__}"
