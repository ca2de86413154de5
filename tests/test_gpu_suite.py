"""The GPU suite's CPU smoke mode (benchmarks/gpu_suite.py --device cpu --small) runs every row."""

import importlib.util
import pathlib

import pytest

SUITE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_run_prints_every_row(capsys):
    rows = _load().main(["--device", "cpu", "--small"])
    out = capsys.readouterr().out
    ntk_rows = [r for r in rows if "full" in r["case"]]
    methods = {(r["case"].split(",")[0], r["method"]) for r in ntk_rows}
    assert {m for _, m in methods} >= {"torch.func baseline", "structured", "jacobian", "auto",
                                       "ntvp"}
    for r in ntk_rows:  # every lazylab method computed the baseline's kernel (float32)
        assert "note" not in r, r
        assert r["rel_err"] < 1e-4, r
    train = [r for r in rows if r["case"].startswith("train step")]
    assert [r["method"] for r in train] == ["standard", "linearize",
                                            "lazy alpha=1e5 (float64 path)"]
    assert all(r["ms"] > 0 for r in train)
    # lazy at alpha = 1e5 moves the weights by O(1/alpha) relative to their size
    move = float(train[2]["note"].split("=")[-1])
    assert 0 < move < 1e-6
    assert "ResNet-18" in out and "torch.func baseline" in out


def test_cuda_is_required_without_cpu_flag(monkeypatch):
    mod = _load()
    monkeypatch.setattr(mod.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA"):
        mod.main(["--device", "cuda"])
