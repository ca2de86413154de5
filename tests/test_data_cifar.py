"""CIFAR-10 reader on tiny fake batches written in the exact cifar-10-batches-py format."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lazylab.data.cifar import (
    CIFAR_MEAN,
    CIFAR_STD,
    cifar10,
    normalize_cifar,
    normalized_black,
    random_crop_flip,
)


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:  # keys are bytes, as in the official (python 2) pickles
        pickle.dump({b"batch_label": b"fake", b"labels": labels, b"data": data,
                     b"filenames": [b"x.png"] * n}, f, protocol=2)
    return data, np.array(labels)


@pytest.fixture
def fake_cifar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [_write_batch(folder / f"data_batch_{i}", 3 + i, seed=i) for i in range(1, 6)]
    test = _write_batch(folder / "test_batch", 4, seed=99)
    return tmp_path, train, test


def test_reads_train_and_test_pixel_layout(fake_cifar):
    root, train, test = fake_cifar
    X, y = cifar10(root, "train")
    data = np.concatenate([d for d, _ in train])
    labels = np.concatenate([lab for _, lab in train])
    assert X.shape == (data.shape[0], 3, 32, 32) and X.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels))
    # naive loop: pixel (c, r, col) of image i is data[i, 1024 c + 32 r + col] / 255
    for i in (0, 7, data.shape[0] - 1):
        for c, r, col in ((0, 0, 0), (1, 5, 31), (2, 31, 17)):
            assert X[i, c, r, col].item() == pytest.approx(data[i, 1024 * c + 32 * r + col] / 255.0)
    assert 0.0 <= X.min() and X.max() <= 1.0
    Xt, yt = cifar10(root / "cifar-10-batches-py", split="test")  # the folder itself also works
    assert Xt.shape == (4, 3, 32, 32) and torch.equal(yt, torch.from_numpy(test[1]))


def test_missing_folder_error_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg
    assert str(tmp_path / "nowhere") in msg and "cifar-10-python.tar.gz" in msg
    assert "download=True" in msg


def test_missing_one_file_is_named(fake_cifar):
    root, _, _ = fake_cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar10(root)
    cifar10(root, "test")  # the test split is still complete


def test_corrupt_files(fake_cifar):
    root, _, _ = fake_cifar
    folder = root / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(b"\x80\x02garbage that is not a pickle")
    with pytest.raises(ValueError, match="corrupt CIFAR-10 file .*test_batch"):
        cifar10(root, "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        cifar10(root, "test")


def test_bad_arguments(fake_cifar):
    root, _, _ = fake_cifar
    with pytest.raises(ValueError, match="split"):
        cifar10(root, "valid")
    with pytest.raises(TypeError, match="data_dir"):
        cifar10(3)


def test_normalize_cifar_constants():
    x = torch.rand(2, 3, 4, 4)
    z = normalize_cifar(x)
    for c in range(3):
        assert torch.allclose(z[:, c], (x[:, c] - CIFAR_MEAN[c]) / CIFAR_STD[c])
    black = normalize_cifar(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(black, torch.tensor(normalized_black()))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        normalize_cifar(torch.rand(2, 1, 4, 4))


def test_random_crop_flip_matches_naive_loop():
    x = torch.rand(6, 3, 8, 8)
    fill = (0.1, -0.2, 0.3)
    out = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2, fill=fill)
    g = torch.Generator().manual_seed(5)  # same draws, in the documented order
    off = torch.randint(0, 5, (2, 6), generator=g)
    mirror = torch.rand(6, generator=g) < 0.5
    for i in range(6):
        padded = torch.stack([F.pad(x[i, c], (2, 2, 2, 2), value=fill[c]) for c in range(3)])
        crop = padded[:, off[0, i]:off[0, i] + 8, off[1, i]:off[1, i] + 8]
        if mirror[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)
    assert out.shape == x.shape


def test_random_crop_flip_identity_and_randomness():
    x = torch.rand(64, 3, 8, 8)
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip=False), x)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    with pytest.raises(ValueError, match="fill"):
        random_crop_flip(x, fill=(0.0, 1.0))
