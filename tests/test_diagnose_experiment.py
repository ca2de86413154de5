"""The ``diagnose`` experiment: lazylab.diagnose with the lab's store, sweep, resume and report."""

from __future__ import annotations

import json

import pytest
import torch

from lazylab.diagnosis import diagnose
from lazylab.lab import diagnose_cli
from lazylab.lab.cli import main
from lazylab.lab.experiments import diagnose as dexp
from lazylab.lab.registry import RunContext
from lazylab.lab.store import load_results

SMALL = ["--set", "width=40", "--set", "data_set=d=5;n=40;n_test=40", "--set", "steps=60",
         "--set", "probe=8", "--set", "snapshots=4", "--set", "kappa=false"]


def test_a_cell_is_the_library_diagnose_with_the_same_settings_and_survives_the_store():
    cfg = dexp.DiagnoseConfig(width=30, alpha=10.0, data_set="d=5;n=30;n_test=30", steps=40,
                              probe=6, snapshots=3, kappa=False, seed=2)
    recs = dexp.run_cell(cfg, RunContext(progress=False))
    (X, y), test = diagnose_cli.load_data("teacher", {"d": 5, "n": 30, "n_test": 30})
    torch.manual_seed(2)
    model, X = diagnose_cli.build_model("two_layer", {"m": 30}, X, y)
    rep = diagnose(model, (X, y), test_data=test, alpha=10.0, steps=40, lr=1.0, n_probe=6,
                   n_snapshots=3, kappa=False, seed=2, progress=False)
    summary = recs[0]
    assert summary["kind"] == "summary" and summary["verdict"] == rep.verdict
    assert {k[2:]: v for k, v in summary.items() if k.startswith("n_")} == rep.numbers
    import pandas as pd

    back = dexp.from_records(pd.DataFrame(recs))
    assert back.numbers == rep.numbers and back.reasons == rep.reasons
    assert back.history["train_loss"].tolist() == rep.history["train_loss"].tolist()
    assert back.spectra["final"].tolist() == rep.spectra["final"].tolist()


def test_run_sweep_over_alpha_with_resume_and_report(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["run", "diagnose", *SMALL, "--sweep", "alpha=0.1,100", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    df = load_results(out)
    verdicts = dict(df[df["kind"] == "summary"][["alpha", "verdict"]].itertuples(index=False))
    # the same net is feature-learning at alpha = 0.1 and lazy at alpha = 100 (negative control)
    assert verdicts == {0.1: "feature learning", 100.0: "lazy"}
    assert summary["metrics"]["kernel_rel_change[alpha=100.0]"] < 0.1
    assert summary["metrics"]["kernel_rel_change[alpha=0.1]"] >= 0.5
    assert (out / "figures" / "diagnose_sweep.png").stat().st_size > 0
    assert "### alpha=100.0: **lazy**" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out


def test_width_applies_only_to_built_in_models():
    cfg = dexp.DiagnoseConfig(model="mypkg:make", width=10)
    with pytest.raises(ValueError, match="width applies to the built-in models"):
        dexp.run_cell(cfg, RunContext(progress=False))
