"""Checkpoints of the training loop: one file, written atomically (temp file + ``os.replace``).

Content: model and optimizer state, the data source's state (generator, permutation), the step,
the records so far and each hook's ``state_dict()``; resuming from it gives the numbers of an
uninterrupted run with the same seed and arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Checkpoint", "atomic_save"]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class Checkpoint:
    """``path``: the file; ``every``: save each k steps (0: only at the end); ``resume``: continue
    from the file when it exists."""

    path: str | os.PathLike
    every: int = 0
    resume: bool = False

    def exists(self) -> bool:
        return Path(self.path).exists()

    def load(self, device: torch.device | None) -> dict[str, Any]:
        return torch.load(Path(self.path), map_location=device, weights_only=False)

    def save(self, blob: dict[str, Any]) -> None:
        atomic_save(blob, Path(self.path))
