"""Figures for the per-layer tools (kept apart from the computations): coordinate-check curves and
the regime-map heat map. matplotlib only; each function returns a Figure."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_coord_check", "plot_regime_map"]


def plot_coord_check(df: Any, value: str = "delta_rms", title: str = "") -> Any:
    """One panel per step > 0 of :func:`lazylab.coord_check.coord_check`'s frame: ``value`` (seed
    mean) against width, one line per layer, log-log."""
    import matplotlib.pyplot as plt

    steps = sorted(s for s in df["step"].unique() if s > 0)
    fig, axes = plt.subplots(1, len(steps), figsize=(3.6 * len(steps), 3.2), squeeze=False)
    means = df.groupby(["step", "layer", "width"], sort=False)[value].mean()
    for ax, t in zip(axes[0], steps):
        for layer, s in means.loc[t].groupby(level=0, sort=False):
            ax.loglog(s.index.get_level_values("width"), s.to_numpy(), "o-", ms=3, label=layer)
        ax.set_title(f"step {t}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel(value)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_regime_map(rmap: Any, measure: str = "feature") -> Any:
    """Heat map of ``log10(measure)`` (seed mean), layers as rows, widths as columns, each row
    labelled with its fitted width exponent and verdict."""
    import matplotlib.pyplot as plt

    t = rmap.table[rmap.table.measure == measure]
    if t.empty:
        raise ValueError(f"no measure {measure!r} in the regime map")
    piv = t.pivot_table(index="layer", columns="width", values="value", aggfunc="mean", sort=False)
    fig, ax = plt.subplots(figsize=(1.2 * piv.shape[1] + 4, 0.45 * piv.shape[0] + 1.5))
    im = ax.imshow(np.log10(piv.to_numpy(float)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(piv.shape[1]), [str(w) for w in piv.columns])
    labels = []
    for layer in piv.index:
        try:
            p = rmap.exponent(layer, measure)
        except KeyError:
            p = float("nan")
        labels.append(f"{layer}  (p={p:+.2f}, {rmap.verdicts.get(layer, '-')})")
    ax.set_yticks(range(piv.shape[0]), labels, fontsize=7)
    ax.set_xlabel("width")
    fig.colorbar(im, ax=ax, label=f"log10 relative {measure} change")
    ax.set_title(f"regime map ({rmap.scheme})")
    fig.tight_layout()
    return fig
