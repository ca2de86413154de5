"""Helpers shared by the experiments' reports: log-log slopes and per-seed statistics.

A claim is measured once per seed (:func:`per_seed`) and reported as mean ± sd over the seeds
(``lazylab.lab.registry.check(..., seeds=values)``); the verdict is on the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["loglog_slope", "per_seed"]


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN when fewer than 2 finite points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def per_seed(df: Any, fn: Callable[[Any], float], seed_col: str = "seed") -> np.ndarray:
    """``[fn(records of seed s) for s in sorted seeds]`` (float array; NaN where ``fn`` gives
    NaN). ``df``: a pandas DataFrame with a ``seed_col`` column. Cost: one ``fn`` per seed."""
    if seed_col not in df.columns:
        return np.array([fn(df)], float)
    return np.array([fn(g) for _, g in df.groupby(seed_col, sort=True)], float)
