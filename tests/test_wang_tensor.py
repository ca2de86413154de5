"""Tests for the wang-tensor experiment: registration, one small cell, the report's check logic."""

import math

import pandas as pd
import pytest

from lazylab.lab.experiments.wang_tensor import WangTensorConfig, report, required_m, run_cell
from lazylab.lab.registry import RunContext, get_experiment
from lazylab.tensor import dim_sym

SMALL = dict(d=6, m_list=(2, 4, 24), tangent_ratios=(0.5, 1.05), gd_steps=250, var_steps=250,
             tangent_max_d=6)


def test_registered_with_presets():
    exp = get_experiment("wang-tensor")
    assert {"quick", "paper"} <= set(exp.presets)
    assert set(exp.presets["quick"].sweep["d"]) >= {10, 20, 40}
    assert len(exp.presets["quick"].sweep["seed"]) >= 3


def test_run_cell_small():
    recs = run_cell(WangTensorConfig(seed=0, **SMALL), RunContext(progress=False))
    df = pd.DataFrame(recs)
    tan = df[df["part"] == "tangent"].set_index("ratio_target")
    dim = dim_sym(6, 3)                                              # 56
    assert tan.loc[0.5, "m"] * 6 <= 0.5 * dim and tan.loc[1.05, "m"] * 6 >= 1.05 * dim
    assert tan.loc[0.5, "residual"] > 0.2
    assert abs(tan.loc[1.05, "residual"]) < 1e-6
    assert tan.loc[1.05, "tangent_rank"] == dim
    ph = df[df["part"] == "phase"]
    assert set(ph["method"]) == {"lazy", "gd", "variant"}
    lazy = ph[ph["method"] == "lazy"].set_index("m")
    assert not lazy.loc[4, "success"] and lazy.loc[4, "rel_error"] > 0.3   # m d = 24 < 56
    assert lazy.loc[24, "success"] and lazy.loc[24, "rel_error"] < 1e-6    # m d = 144 > 56
    assert (ph["success"] == (ph["rel_error"] <= 0.05)).all()
    again = pd.DataFrame(run_cell(WangTensorConfig(seed=0, **SMALL), RunContext(progress=False)))
    assert again["rel_error"].equals(df["rel_error"])                     # same seed, same numbers


def _fake_phase(mreq_lazy, mreq_var, gd_fail_at_r):
    rows = []
    ms = [2, 4, 8, 16, 32, 64, 128]
    for d in (10, 20, 40):
        for m in ms:
            for seed in range(2):
                rows.append({"part": "phase", "method": "lazy", "d": d, "m": m, "seed": seed,
                             "success": m >= mreq_lazy[d], "seconds": 0.0})
                rows.append({"part": "phase", "method": "variant", "d": d, "m": m, "seed": seed,
                             "success": m >= mreq_var[d], "seconds": 0.0})
                rows.append({"part": "phase", "method": "gd", "d": d, "m": m, "seed": seed,
                             "success": not (m == 2 and seed < gd_fail_at_r), "seconds": 0.0})
    return pd.DataFrame(rows)


def test_report_checks_pass_and_fail_on_the_right_data():
    base = WangTensorConfig(rank=2)
    good = report(_fake_phase({10: 32, 20: 128, 40: math.inf}, {10: 4, 20: 4, 40: 8}, 1), base)
    verdict = {c.name: c.passed for c in good.checks}
    assert all(verdict.values()), verdict
    assert good.metrics["m_required_lazy_d=20"] == 128
    assert good.metrics["gd_failure_fraction_m=r"] == pytest.approx(3 / 6)
    assert set(good.figures) == {"phase_diagram"}
    bad = report(_fake_phase({10: 8, 20: 8, 40: 16}, {10: 4, 20: 16, 40: 64}, 0), base)
    verdict = {c.name: c.passed for c in bad.checks}
    assert not any(verdict.values()), verdict


def test_required_m_needs_success_to_persist():
    t = pd.DataFrame({"method": "x", "d": 5, "m": [1, 2, 4, 8], "success": [0.5, 0.0, 1.0, 1.0]})
    assert required_m(t, "x", 5) == 4
    t["success"] = 0.0
    assert required_m(t, "x", 5) == math.inf


def test_bad_method():
    with pytest.raises(ValueError, match="methods"):
        run_cell(WangTensorConfig(d=4, methods=("nope",)), RunContext(progress=False))


def test_claims_fail_on_negative_controls():
    """Negative controls on real small runs (d = 4, 6; 3 seeds): the lazy claims (m_required at the
    exact threshold ceil(dim Sym³/d), m·d >= 0.9 dim) fail on plain GD's feature-learning fits
    labelled 'lazy'; 'variant's m does not grow with d' fails on the lazy fit labelled 'variant';
    'plain GD fails at m = r' fails on fits that succeed (the lazy fit above its threshold,
    labelled GD at m = r)."""
    from lazylab.lab.experiments.wang_tensor import exact_lazy_threshold

    cfg = dict(m_list=(1, 2, 4, 8, 16), tangent_max_d=0, gd_steps=300, rank=1,
               methods=("lazy", "gd"))
    recs = [{**r, "d": d, "seed": s} for d in (4, 6) for s in (0, 1, 2)
            for r in run_cell(WangTensorConfig(seed=s, d=d, **cfg), RunContext(progress=False))]
    df = pd.DataFrame(recs)
    base = WangTensorConfig(rank=1)
    ok = {c.name.split(":")[0] + c.name.split(":")[1][:12]: c for c in report(df, base).checks}
    lazy_ok = [c for c in ok.values() if c.name.startswith("lazy")]
    assert len(lazy_ok) == 2 and all(c.passed for c in lazy_ok), lazy_ok  # the real lazy fit
    assert exact_lazy_threshold(6) == 10 and exact_lazy_threshold(20) == 77
    ph = df[df["part"] == "phase"]
    gd_as_lazy = ph[ph["method"] == "gd"].assign(method="lazy")
    bad = [c for c in report(gd_as_lazy, base).checks if c.name.startswith("lazy")]
    assert len(bad) == 2 and not any(c.passed for c in bad), bad
    lazy_as_var = ph[ph["method"] == "lazy"].assign(method="variant")
    (var,) = [c for c in report(lazy_as_var, WangTensorConfig(rank=1)).checks
              if c.name.startswith("variant")]
    assert not var.passed and var.value >= 2
    fits = ph[(ph["method"] == "lazy") & (ph["m"] == 16)].assign(m=1, method="gd")
    assert fits["success"].all()
    (gd,) = [c for c in report(fits, base).checks if c.name.startswith("plain GD")]
    assert not gd.passed and gd.value == 0.0
