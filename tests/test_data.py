import pytest
import torch

import lazylab


def test_sphere_radius_and_determinism():
    x = lazylab.data.sphere(100, 7, radius=3.0, seed=1)
    assert torch.allclose(x.norm(dim=1), torch.full((100,), 3.0), atol=1e-5)
    assert torch.equal(x, lazylab.data.sphere(100, 7, radius=3.0, seed=1))


def test_teacher_formula():
    f, B, a = lazylab.data.teacher_two_layer(6, m0=3, seed=0)
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(B.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(f(x), torch.relu(x @ B.T) @ a)


def test_digits_split():
    (Xtr, ytr), (Xte, yte) = lazylab.data.digits(classes=[3, 5], binary_labels=True)
    assert Xtr.shape[1:] == (1, 8, 8) and set(ytr.tolist()) == {-1.0, 1.0}
    assert 0 <= Xtr.min() and Xtr.max() <= 1
    with pytest.raises(ValueError, match="classes"):
        lazylab.data.digits(classes=[3, 12])
