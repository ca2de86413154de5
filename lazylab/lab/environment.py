"""``environment.json``: what a run needs to be reproduced (versions, device, seeds, git, argv)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["collect_environment", "git_revision"]

_PACKAGES = ("lazylab", "torch", "numpy", "scipy", "pandas", "matplotlib", "dask", "distributed")


def git_revision(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: the
    lazylab package), or None when it is not in a git repository or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_environment(*, device: str, seeds: list[Any], executor: str = "local",
                        workers: int = 1, threads: int | None = None,
                        argv: list[str] | None = None) -> dict[str, Any]:
    """Versions of Python and the scientific stack, platform, CPU count, device (and the CUDA
    device name when it is used), the seeds of the cells, executor, git revision and the
    command line."""
    import torch

    env: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "packages": {p: _version(p) for p in _PACKAGES},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_per_cell": threads,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "seeds": seeds,
        "executor": executor,
        "workers": workers,
        "git": git_revision(),
        "command": argv if argv is not None else sys.argv,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda_version"] = torch.version.cuda
    return env
