"""Shared test settings: one torch thread (the tests use small tensors, and CI has 2 cores where
oversubscribed intra-op threads only slow small ops down), glibc allocator tuning, deterministic
seeds, no display."""

import os

import matplotlib
import pytest
import torch

from lazylab.lab.memory import tune_malloc

matplotlib.use("Agg")
tune_malloc()  # reuse freed tensor memory: far fewer page faults (see lazylab/lab/memory.py)
os.environ.setdefault("LAZYLAB_NO_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
