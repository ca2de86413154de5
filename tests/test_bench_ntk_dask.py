"""benchmarks/bench_ntk_dask.py at a toy size: every row printed, the Dask kernels equal the
in-process one (so the benchmark cannot rot between the runs recorded in docs/ntk.md)."""

import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("distributed")
BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ntk_dask.py"


def test_toy_run_prints_every_row_and_equal_kernels():
    out = subprocess.run([sys.executable, str(BENCH), "--n", "120", "--repeat", "1",
                          "--widths", "8", "16", "1", "--method", "structured"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = dict(re.findall(r"^(in-process \(1 thread\)|Dask LocalCluster, \d workers?)\s+"
                           r"[\d.]+\s+[\d.]+x\s+(\S+)$", out, re.M))
    assert set(rows) == {"in-process (1 thread)", "Dask LocalCluster, 1 worker",
                         "Dask LocalCluster, 2 workers"}
    assert all(float(err) < 1e-6 for err in rows.values()), rows  # max relative difference
    assert re.search(r"^2 workers over 1 worker: [\d.]+x$", out, re.M)
    assert re.search(r"^reference \(2 independent processes.*: [\d.]+x$", out, re.M)
