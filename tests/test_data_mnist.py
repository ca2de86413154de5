"""MNIST reader on tiny fake idx files (plain and gzipped) written in the exact idx format."""

import gzip
import struct

import numpy as np
import pytest
import torch

from lazylab.data.mnist import mnist, read_idx, resize


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
    dims = b"".join(struct.pack(">I", s) for s in arr.shape)
    return magic + dims + arr.astype(np.uint8).tobytes()


def _write(folder, split_prefix, n, seed, gz=False):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=n, dtype=np.uint8)
    pairs = ((f"{split_prefix}-images-idx3-ubyte", imgs), (f"{split_prefix}-labels-idx1-ubyte", labs))
    for name, arr in pairs:
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            (folder / name).write_bytes(_idx_bytes(arr))
    return imgs, labs


def test_reads_plain_and_gz(tmp_path):
    imgs, labs = _write(tmp_path, "train", 5, 0)
    timgs, tlabs = _write(tmp_path, "t10k", 3, 1, gz=True)
    X, y = mnist(tmp_path, "train")
    assert X.shape == (5, 1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(X[:, 0], torch.from_numpy(imgs.astype(np.float32) / 255))
    assert torch.equal(y, torch.from_numpy(labs.astype(np.int64)))
    Xt, yt = mnist(str(tmp_path), split="test")
    assert Xt.shape == (3, 1, 28, 28)
    assert Xt[2, 0, 27, 3].item() == pytest.approx(timgs[2, 27, 3] / 255)
    assert torch.equal(yt, torch.from_numpy(tlabs.astype(np.int64)))


def test_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write(raw, "t10k", 2, 3)
    assert mnist(tmp_path, "test")[0].shape == (2, 1, 28, 28)


def test_missing_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        mnist(tmp_path / "none", "train")
    msg = str(e.value)
    assert str(tmp_path / "none") in msg
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in msg
    assert "download=True" in msg


def test_corrupt_files(tmp_path):
    _write(tmp_path, "train", 4, 0)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="corrupt idx file .*train-images-idx3-ubyte"):
        mnist(tmp_path)
    p.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)  # bad magic
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)
    g = tmp_path / "t10k-images-idx3-ubyte.gz"
    g.write_bytes(b"not a gzip stream")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(1, np.uint8)))
    with pytest.raises(ValueError, match="corrupt idx file"):
        mnist(tmp_path, "test")


def test_label_count_mismatch(tmp_path):
    _write(tmp_path, "train", 4, 0)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="4 images"):
        mnist(tmp_path)


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        mnist(tmp_path, "val")


def test_resize():
    x = torch.rand(3, 1, 28, 28)
    assert resize(x, 10).shape == (3, 1, 10, 10)
    assert resize(x[:, 0], 10).shape == (3, 10, 10)
    c = torch.full((2, 1, 28, 28), 0.7)
    assert torch.allclose(resize(c, 7), torch.full((2, 1, 7, 7), 0.7), atol=1e-6)
    # area mode: 2x2 block means, checked against a naive loop
    y = torch.rand(1, 1, 4, 4)
    r = resize(y, 2, mode="area")
    for i in range(2):
        for j in range(2):
            block = y[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert r[0, 0, i, j].item() == pytest.approx(block.mean().item())
    with pytest.raises(ValueError, match="size"):
        resize(x, 0)
