"""MNIST from its standard idx files, read without torchvision.

Files (each optionally gzipped, ``.gz``)::

    DATA_DIR/train-images-idx3-ubyte   DATA_DIR/train-labels-idx1-ubyte   (60000 images)
    DATA_DIR/t10k-images-idx3-ubyte    DATA_DIR/t10k-labels-idx1-ubyte    (10000 images)

``DATA_DIR`` may also hold them in ``MNIST/raw/`` (torchvision's layout) or ``mnist/``.
idx format: big-endian header ``0x00 0x00 <dtype=0x08 (uint8)> <ndim>``, then ``ndim`` uint32
sizes, then the data row-major. Images: magic 2051, sizes (N, 28, 28); labels: magic 2049, (N,).

Also :func:`resize` (Wang et al. 2022 resize the digits to ``size x size``, so ``d = size**2``).
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mnist", "read_idx", "resize", "MNIST_FILES", "MNIST_MIRRORS"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
    "http://yann.lecun.com/exdb/mnist/",
)
_SUBDIRS = ("", "MNIST/raw", "mnist")


def _find(root: Path, name: str) -> Path | None:
    for sub in _SUBDIRS:
        for cand in (root / sub / name, root / sub / (name + ".gz")):
            if cand.is_file():
                return cand
    return None


def _missing_message(root: Path, missing: list[str]) -> str:
    return (
        f"MNIST not found in {root}: missing {', '.join(missing)} (plain or .gz). Put the four "
        "idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte (each may be gzipped, .gz) directly in {root} (or in "
        f"{root / 'MNIST' / 'raw'}); they are at {MNIST_MIRRORS[0]}<name>.gz. Or call "
        "mnist(data_dir, download=True) on a machine with internet access."
    )


def _download(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        dest = root / (name + ".gz")
        errors = []
        for mirror in MNIST_MIRRORS:
            tmp = dest.with_name(dest.name + ".part")
            try:
                urllib.request.urlretrieve(mirror + name + ".gz", tmp)
            except OSError as e:
                errors.append(f"{mirror}: {e}")
                continue
            os.replace(tmp, dest)
            break
        else:
            raise OSError(f"download of {name}.gz failed from every mirror ({'; '.join(errors)}); "
                          + _missing_message(root, [name]))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (plain or ``.gz``) into a numpy array of its header's shape (uint8 only).

    Raises ValueError naming the file when the header or the size is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream
        raise ValueError(f"corrupt idx file {path}: cannot read it ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"corrupt idx file {path}: bad magic number (expected bytes 00 00 08 <ndim>)")
    if raw[2] != 0x08:
        raise ValueError(f"idx file {path}: data type code 0x{raw[2]:02x} is not uint8 (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"corrupt idx file {path}: header truncated (ndim={ndim})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(f"corrupt idx file {path}: header says shape {shape} ({expected} bytes) but "
                         f"the file holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist(
    data_dir: str | os.PathLike,
    split: str = "train",
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """MNIST images and labels from idx files in ``data_dir`` (see the module docstring).

    Args:
        data_dir: folder holding the idx files (or ``MNIST/raw/`` inside it).
        split: ``"train"`` (60000) or ``"test"`` (10000).
        download: when files are missing, fetch the ``.gz`` files with urllib from
            ``MNIST_MIRRORS`` into ``data_dir``. Off by default.

    Returns:
        ``(X, y)``: X float32 (N, 1, 28, 28) = pixel / 255 in [0, 1]; y int64 (N,) in 0..9.

    Raises:
        FileNotFoundError: files missing (the message says what to put where).
        ValueError: bad ``split``; corrupt file (named); images and labels of different lengths.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    root = Path(data_dir).expanduser()
    names = list(MNIST_FILES[split])
    missing = [n for n in names if _find(root, n) is None]
    if missing and download:
        _download(root, missing)
        missing = [n for n in names if _find(root, n) is None]
    if missing:
        raise FileNotFoundError(_missing_message(root, missing))
    img_path, lab_path = (_find(root, n) for n in names)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise ValueError(f"corrupt idx file {img_path}: images must be 3-d (N, rows, cols), got "
                         f"shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lab_path} holds labels of shape {labels.shape} but {img_path} holds "
                         f"{images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"corrupt idx file {lab_path}: labels must be in 0..9, max is {labels.max()}")
    X = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))


def resize(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Resize images to ``size x size`` with ``torch.nn.functional.interpolate`` (antialiased when
    shrinking with bilinear/bicubic, like torchvision's Resize on tensors).

    x: (N, C, H, W) or (N, H, W) (returned in the same rank). Cost O(N C H W)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of shape (N, C, H, W) or (N, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    squeeze = x.dim() == 3
    x4 = x.unsqueeze(1) if squeeze else x
    kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x4, size=(size, size), mode=mode, **kw)
    return out.squeeze(1) if squeeze else out
