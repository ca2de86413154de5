"""The grid of cells of a sweep.

A sweep ``{k1: [a, b], k2: [x, y, z]}`` over a base config is the cartesian product of the value
lists (``len = 2 * 3`` cells), in key order then value order. Each :class:`Cell` is the base
config with the swept keys fixed; its id is a hash of the cell's full config as canonical JSON,
so the same cell has the same id in every run, process and machine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from lazylab.lab.config import ResolvedConfig, canonical_json, cell_hash

__all__ = ["Cell", "grid"]


@dataclass(frozen=True)
class Cell:
    """One point of the grid.

    ``index``: position in the grid; ``params``: the swept keys and their values;
    ``config``: the full resolved config of this cell (JSON values); ``id``: its stable hash.
    """

    index: int
    id: str
    params: dict[str, Any]
    config: dict[str, Any]

    def label(self) -> str:
        """``"k1=a k2=x"`` (or ``"(single cell)"`` without a sweep)."""
        if not self.params:
            return "(single cell)"
        return " ".join(f"{k}={v}" for k, v in self.params.items())


def grid(resolved: ResolvedConfig, report_settings: tuple[str, ...] = ()) -> list[Cell]:
    """All cells of ``resolved.sweep`` over ``resolved.base`` (one cell when nothing is swept).

    Cell ids leave out the keys in ``report_settings`` (see :func:`~lazylab.lab.config.cell_hash`).
    Raises ValueError on an empty value list, on a swept report setting, or when two cells
    coincide (duplicate values).
    """
    swept = [k for k in resolved.sweep if k in report_settings]
    if swept:
        raise ValueError(f"--sweep: {swept} only change how the report judges the results, not "
                         "the cells; set one value with --set, or re-judge a finished run with "
                         "`lazylab report DIR --set KEY=VALUE`")
    keys = list(resolved.sweep)
    for k in keys:
        if not resolved.sweep[k]:
            raise ValueError(f"sweep over {k!r} is empty")
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, values in enumerate(itertools.product(*(resolved.sweep[k] for k in keys))):
        params = dict(zip(keys, values))
        config = {**resolved.base, **params}
        cid = cell_hash(config, report_settings)
        if cid in seen:
            raise ValueError(f"sweep has duplicate cells: {canonical_json(params)} repeats cell "
                             f"{seen[cid]}; remove the repeated value")
        seen[cid] = i
        cells.append(Cell(index=i, id=cid, params=params, config=config))
    return cells
