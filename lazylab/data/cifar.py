"""CIFAR-10 from its standard ``cifar-10-batches-py`` folder, read without torchvision.

Layout (the official python tarball ``cifar-10-python.tar.gz`` unpacked)::

    DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5   (training, 5 x 10000 images)
    DATA_DIR/cifar-10-batches-py/test_batch                      (test, 10000 images)

Each file is a Python pickle of a dict with ``b"data"`` (uint8, shape (10000, 3072): the 1024 red,
then green, then blue pixels of a 32x32 image, row-major) and ``b"labels"`` (10000 ints in 0..9).
``DATA_DIR`` may also be the ``cifar-10-batches-py`` folder itself.

Also here: Chizat et al.'s normalization (:func:`normalize_cifar`) and the standard augmentation
(:func:`random_crop_flip`, RandomCrop(32, padding=4) + horizontal flip) written in torch.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["cifar10", "normalize_cifar", "random_crop_flip", "CIFAR_MEAN", "CIFAR_STD",
           "CIFAR_URL", "CIFAR_FOLDER"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# Chizat, Oyallon & Bach's code (cnn/train.py): transforms.Normalize(mean, std)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _folder(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if root.name == CIFAR_FOLDER:
        return root
    return root / CIFAR_FOLDER


def _missing_message(folder: Path, missing: list[str]) -> str:
    return (
        f"CIFAR-10 not found: {folder} is missing {', '.join(missing)}. Put the official python "
        f"version there: download {CIFAR_URL} (163 MB) and unpack it inside "
        f"{folder.parent} (`tar xzf cifar-10-python.tar.gz -C {folder.parent}`), which creates "
        f"the folder {CIFAR_FOLDER}/ with data_batch_1 ... data_batch_5, test_batch and "
        "batches.meta; or call cifar10(data_dir, download=True) on a machine with internet "
        "access. data_dir may be the parent folder or the cifar-10-batches-py folder itself."
    )


def _download(folder: Path) -> None:
    """Fetch the official tarball into ``folder.parent``, check its md5 and unpack it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tar_path = folder.parent / "cifar-10-python.tar.gz"
    if not tar_path.exists():
        tmp = tar_path.with_name(tar_path.name + ".part")
        try:
            urllib.request.urlretrieve(CIFAR_URL, tmp)
        except OSError as e:
            raise OSError(f"download of {CIFAR_URL} failed ({e}); "
                          + _missing_message(folder, ["its files"])) from e
        os.replace(tmp, tar_path)
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    if md5 != CIFAR_MD5:
        raise ValueError(f"{tar_path} has md5 {md5}, expected {CIFAR_MD5}: the download is "
                         "corrupt; delete the file and retry")
    with tarfile.open(tar_path, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(CIFAR_FOLDER + "/")
                   and m.isfile() and ".." not in m.name]
        tf.extractall(folder.parent, members=members)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated/garbage pickle
        raise ValueError(f"corrupt CIFAR-10 file {path}: cannot unpickle it ({type(e).__name__}: "
                         f"{e}); replace it with the file from {CIFAR_URL}") from e
    if not isinstance(blob, dict):
        raise ValueError(f"corrupt CIFAR-10 file {path}: expected a pickled dict, got "
                         f"{type(blob).__name__}")
    data = blob.get(b"data", blob.get("data"))
    labels = blob.get(b"labels", blob.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"corrupt CIFAR-10 file {path}: the dict has no 'data'/'labels' entries "
                         f"(keys: {sorted(map(str, blob))})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"corrupt CIFAR-10 file {path}: 'data' must be uint8 of shape (N, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"corrupt CIFAR-10 file {path}: 'labels' must be {data.shape[0]} ints in "
                         f"0..9, got shape {labels.shape}")
    return data, labels


def cifar10(
    data_dir: str | os.PathLike,
    split: str = "train",
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 images and labels from ``data_dir`` (see the module docstring for the layout).

    Args:
        data_dir: the folder holding ``cifar-10-batches-py/`` (or that folder itself).
        split: ``"train"`` (50000 images, data_batch_1..5) or ``"test"`` (10000, test_batch).
        download: when the files are missing, fetch the official tarball (``CIFAR_URL``, md5
            checked) with urllib and unpack it into ``data_dir``. Off by default: nothing is
            fetched unless asked.

    Returns:
        ``(X, y)``: X float32 of shape (N, 3, 32, 32) with values ``pixel / 255`` in [0, 1];
        y int64 of shape (N,) in 0..9. Cost: reading ~30 MB per 10000 images.

    Raises:
        FileNotFoundError: files missing (the message says what to put where).
        ValueError: bad ``split`` or a corrupt file (named).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    folder = _folder(data_dir)
    files = TRAIN_FILES if split == "train" else TEST_FILES
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download(folder)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(_missing_message(folder, missing))
    parts = [_read_batch(folder / f) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    X = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return X, torch.from_numpy(labels)


def normalize_cifar(x: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel with Chizat et al.'s constants (``CIFAR_MEAN``,
    ``CIFAR_STD``). x: (N, 3, H, W) in [0, 1]; returns a new tensor of the same shape/dtype."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a tensor of shape (N, 3, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    mean = torch.tensor(CIFAR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def normalized_black() -> tuple[float, float, float]:
    """The value of a black pixel (0) after :func:`normalize_cifar`: ``-mean / std`` per channel.
    Use it as ``fill`` of :func:`random_crop_flip` on normalized images (torchvision pads before
    normalizing, so its padding is black)."""
    return tuple(-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD))  # type: ignore[return-value]


def random_crop_flip(
    xb: Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    fill: float | tuple[float, ...] = 0.0,
    flip: bool = True,
) -> Tensor:
    """RandomCrop(H, padding) + RandomHorizontalFlip(0.5) on a batch, independently per image.

    Each image of ``xb`` (N, C, H, W) is padded by ``padding`` pixels of value ``fill`` (a number
    or one per channel) on every side, an H x W window at a uniform offset in
    ``{0..2 padding}^2`` is cut out, and with probability 1/2 it is mirrored left-right. Random
    numbers come from ``generator`` (a CPU generator; default: torch's global one), so a seeded
    generator gives the same batch on CPU and CUDA. Cost O(N C H W).
    """
    if not isinstance(xb, Tensor) or xb.dim() != 4:
        raise ValueError(f"xb must be a tensor of shape (N, C, H, W), got "
                         f"{tuple(xb.shape) if isinstance(xb, Tensor) else type(xb).__name__}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, c, h, w = xb.shape
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(xb.device)
    mirror = (torch.rand(n, generator=generator) < 0.5).to(xb.device) if flip else None
    if padding:
        fills = torch.as_tensor(fill, dtype=xb.dtype, device=xb.device).reshape(-1)
        if fills.numel() not in (1, c):
            raise ValueError(f"fill must be a number or {c} numbers (one per channel), got {fill!r}")
        padded = fills.view(1, -1, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = xb
        rows = off[0][:, None] + torch.arange(h, device=xb.device)  # (N, H)
        cols = off[1][:, None] + torch.arange(w, device=xb.device)  # (N, W)
        idx_n = torch.arange(n, device=xb.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        out = out.permute(0, 3, 1, 2).contiguous()
    else:
        out = xb.clone()
    if mirror is not None:
        out = torch.where(mirror.view(n, 1, 1, 1), out.flip(-1), out)
    return out
