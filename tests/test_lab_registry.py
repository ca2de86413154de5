"""Tests of lazylab.lab.registry: registration rules, lookup errors, discovery, checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from lazylab.lab import registry as reg
from lazylab.lab.registry import (
    Check,
    Experiment,
    Preset,
    Report,
    RunContext,
    UnknownExperimentError,
    check,
    get_experiment,
    list_experiments,
    register,
)


@dataclass
class Cfg:
    seed: int = 0
    n: int = 3


@dataclass
class NoSeed:
    n: int = 3


def _run(cfg, ctx):
    return [{"n": cfg.n}]


def _report(df, cfg):
    return Report(metrics={}, checks=[], figures={})


def _exp(name, config=Cfg, presets=None):
    presets = {"quick": Preset(), "paper": Preset()} if presets is None else presets
    return Experiment(name, "test experiment", config, presets, _run, _report)


@pytest.fixture
def clean_registry():
    list_experiments()  # discover the built-ins first, so they survive the restore
    before = dict(reg._REGISTRY)
    yield
    reg._REGISTRY.clear()
    reg._REGISTRY.update(before)


def test_register_and_lookup(clean_registry):
    exp = register(_exp("t-registry-a"))
    assert get_experiment("t-registry-a") is exp
    names = [e.name for e in list_experiments()]
    assert "t-registry-a" in names and names == sorted(names)
    assert register(exp) is exp  # re-registering the same object is a no-op


def test_register_rejects_bad_experiments(clean_registry):
    register(_exp("t-registry-dup"))
    with pytest.raises(ValueError, match="already registered"):
        register(_exp("t-registry-dup"))
    with pytest.raises(ValueError, match=r"missing preset\(s\) \['paper'\]"):
        register(_exp("t-registry-nopaper", presets={"quick": Preset()}))
    with pytest.raises(TypeError, match="seed"):
        register(_exp("t-registry-noseed", config=NoSeed))
    with pytest.raises(TypeError, match="dataclass"):
        register(_exp("t-registry-notdc", config=dict))
    with pytest.raises(ValueError, match="unknown config key.*'bogus'.*valid keys"):
        register(_exp("t-registry-badkey", presets={"quick": Preset(set={"bogus": 1}),
                                                    "paper": Preset()}))
    with pytest.raises(ValueError, match="empty sweep"):
        register(_exp("t-registry-empty", presets={"quick": Preset(sweep={"n": []}),
                                                   "paper": Preset()}))
    assert not any(n.startswith("t-registry-") and n != "t-registry-dup" for n in reg._REGISTRY)


def test_unknown_experiment_lists_known():
    with pytest.raises(UnknownExperimentError) as ei:
        get_experiment("no-such-experiment")
    msg = str(ei.value)
    assert "no-such-experiment" in msg and "regimes-demo" in msg
    assert isinstance(ei.value, KeyError)


def test_discovery_finds_builtin_demo():
    exp = get_experiment("regimes-demo")
    assert {"quick", "paper"} <= set(exp.presets)
    assert exp.description


def test_plugin_env_var_registers_outside_experiments(tmp_path):
    (tmp_path / "my_lab_plugin.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from lazylab.lab.registry import Experiment, Preset, Report, register

        @dataclass
        class C:
            seed: int = 0

        register(Experiment("plugin-exp", "from a plugin", C,
                            {"quick": Preset(), "paper": Preset()},
                            lambda c, ctx: [], lambda df, c: Report({}, [], {})))
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "LAZYLAB_EXPERIMENTS": "my_lab_plugin"}
    out = subprocess.run([sys.executable, "-m", "lazylab.lab.cli", "list"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin-exp" in out.stdout and "from a plugin" in out.stdout
    assert "regimes-demo" in out.stdout


def test_check_helper():
    c = check("x", 1.05, 1.0, rtol=0.1)
    assert c.passed and c.target == 1.0
    assert not check("x", 1.2, 1.0, rtol=0.1).passed
    assert check("x", 0.5, 1.0, atol=0.5).passed
    assert check("y", 0.01, 0.05, op="<").passed
    assert not check("y", 0.1, 0.05, op="<").passed
    with pytest.raises(ValueError, match="rtol"):
        check("z", 1.0, 1.0)
    d = Check("a", 1.0, 2.0, False).to_dict()
    # the original fields, unchanged (backward compatible) ...
    assert {k: d[k] for k in ("name", "value", "target", "passed", "tolerance")} == {
        "name": "a", "value": 1.0, "target": 2.0, "passed": False, "tolerance": ""}
    # ... and the new ones: a check is a claim by default, a failed claim is "not reproduced"
    assert d["kind"] == "claim" and d["verdict"] == "not reproduced" and d["n"] is None


def test_check_kinds_bands_and_seed_statistics():
    import math

    import numpy as np

    c = check("plateau", None, 3.1, lo=2.75, hi=3.45, seeds=[3.0, 3.2, 3.1], source="Fig 1(c) [F]")
    assert c.passed and c.tolerance == "band [2.75, 3.45]" and c.source == "Fig 1(c) [F]"
    assert c.n == 3 and math.isclose(c.mean, 3.1) and math.isclose(c.value, 3.1)
    assert math.isclose(c.sd, float(np.std([3.0, 3.2, 3.1], ddof=1)))
    assert not check("plateau", 2.7, 3.1, lo=2.75, hi=3.45).passed
    assert not check("nan", float("nan"), 3.1, lo=2.75, hi=3.45).passed
    # NaN seeds are dropped; one seed: sd is NaN
    one = check("x", None, 1.0, op=">", seeds=[2.0, float("nan")])
    assert one.n == 1 and math.isnan(one.sd) and one.passed
    s = check("identity", 1e-9, 1e-6, op="<=", kind="sanity")
    assert s.kind == "sanity" and s.verdict == "pass"
    assert check("identity", 1.0, 1e-6, op="<=", kind="sanity").verdict == "fail"
    with pytest.raises(ValueError, match="kind"):
        Check("a", 1.0, 2.0, False, kind="bogus")
    with pytest.raises(ValueError, match="seeds"):
        check("a", None, 1.0, op="<")


def test_report_settings_must_be_config_keys_and_not_swept(clean_registry):
    with pytest.raises(ValueError, match="report_settings"):
        register(Experiment("rs-bad", "x", Cfg, {"quick": Preset(), "paper": Preset()}, _run,
                            _report, report_settings=("nope",)))
    with pytest.raises(ValueError, match="cannot be swept"):
        register(Experiment("rs-swept", "x", Cfg, {"quick": Preset(sweep={"n": [1, 2]}),
                                                   "paper": Preset()}, _run, _report,
                            report_settings=("n",)))


def test_runcontext_bar_respects_progress():
    assert list(RunContext(progress=False).bar(range(4))) == [0, 1, 2, 3]
    assert RunContext(progress=False).bar(range(4)).disable
    assert RunContext().device == "cpu"
