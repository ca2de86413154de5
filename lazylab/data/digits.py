"""scikit-learn's 8x8 handwritten digits (1797 images, ships with scikit-learn; no download)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def digits(
    classes: Sequence[int] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    flatten: bool = False,
    binary_labels: bool = False,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Train/test split of the digits, pixels scaled to [0, 1].

    Returns ``((X_train, y_train), (X_test, y_test))`` with X of shape (N, 1, 8, 8) (or (N, 64) when
    ``flatten``) and integer labels re-indexed 0..C-1 over ``classes`` (default all ten). With
    ``binary_labels`` and two classes the labels are -1/+1 floats.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digits() reads scikit-learn's copy of the data set: install it with "
                          "`pip install scikit-learn` (or lazylab's extra: `pip install lazylab[lab]`)"
                          ) from e

    ds = load_digits()
    X = ds.images.astype(np.float32) / 16.0
    y = ds.target.astype(np.int64)
    if classes is not None:
        classes = list(classes)
        unknown = sorted(set(classes) - set(range(10)))
        if unknown or len(classes) < 2:
            raise ValueError(f"classes must be >= 2 distinct digits in 0..9, got {classes}")
        keep = np.isin(y, classes)
        X, y = X[keep], np.searchsorted(np.array(sorted(classes)), y[keep])
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    Xt = torch.from_numpy(X).unsqueeze(1)
    if flatten:
        Xt = Xt.flatten(1)
    yt = torch.from_numpy(y)
    if binary_labels:
        if int(yt.max()) != 1:
            raise ValueError("binary_labels needs exactly two classes")
        yt = yt.float() * 2 - 1
    return (Xt[tr], yt[tr]), (Xt[te], yt[te])
