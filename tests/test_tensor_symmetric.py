"""Tests for lazylab.tensor.symmetric: CP inner products vs dense arrays (float64)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazylab.tensor.symmetric import SymCP, cp_inner, dim_sym, random_ground_truth, symmetrize

F64 = torch.float64


def _naive_dense(c, u, order):
    d = u.shape[1]
    out = torch.zeros((d,) * order, dtype=F64)
    for idx in itertools.product(range(d), repeat=order):
        out[idx] = sum(float(c[i]) * math.prod(float(u[i, a]) for a in idx)
                       for i in range(u.shape[0]))
    return out


def test_dim_sym_counts_multisets():
    for d, order in [(1, 3), (4, 2), (5, 3), (6, 4)]:
        n = sum(1 for _ in itertools.combinations_with_replacement(range(d), order))
        assert dim_sym(d, order) == n
    assert dim_sym(20, 3) == 1540
    assert dim_sym(40, 3) == 11480
    with pytest.raises(ValueError, match="d must"):
        dim_sym(0, 3)


def test_dense_matches_naive_loop_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(3, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    for order in (3, 4):
        t = SymCP(c, u, order).dense()
        assert torch.allclose(t, _naive_dense(c, u, order), atol=1e-12)
        assert torch.allclose(symmetrize(t), t, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 4), d=st.integers(1, 5), order=st.integers(2, 4),
       seed=st.integers(0, 10_000))
def test_inner_product_equals_dense(m, n, d, order, seed):
    g = torch.Generator().manual_seed(seed)
    a = SymCP(torch.randn(m, generator=g, dtype=F64), torch.randn(m, d, generator=g, dtype=F64),
              order)
    b = SymCP(torch.randn(n, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64),
              order)
    dense = (a.dense() * b.dense()).sum()
    assert torch.allclose(a.inner(b), dense, rtol=1e-10, atol=1e-10)
    assert torch.allclose(a.norm_sq(), a.dense().pow(2).sum(), rtol=1e-10, atol=1e-10)
    x = torch.randn(2, d, generator=g, dtype=F64)
    ev = torch.stack([SymCP(torch.ones(1, dtype=F64), xi[None], order).inner(a) for xi in x])
    assert torch.allclose(a.evaluate(x), ev, rtol=1e-10, atol=1e-10)


def test_ground_truth_kinds():
    g = torch.Generator().manual_seed(1)
    t = random_ground_truth(10, 4, 3, "orthogonal", generator=g, dtype=F64)
    assert torch.allclose(t.vectors @ t.vectors.T, torch.eye(4, dtype=F64), atol=1e-12)
    assert torch.allclose(t.norm_sq(), torch.tensor(4.0, dtype=F64))
    t = random_ground_truth(10, 12, 4, "general", coefs="uniform", generator=g, dtype=F64)
    assert torch.allclose(t.vectors.norm(dim=1), torch.ones(12, dtype=F64))
    assert ((t.coefs >= 1) & (t.coefs <= 2)).all()
    a = random_ground_truth(6, 2, generator=torch.Generator().manual_seed(5))
    b = random_ground_truth(6, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.vectors, b.vectors)


def test_bad_inputs():
    with pytest.raises(ValueError, match="rank <= d"):
        random_ground_truth(3, 4, 3, "orthogonal")
    with pytest.raises(ValueError, match="kind"):
        random_ground_truth(3, 2, 3, "weird")
    with pytest.raises(ValueError, match="coefs"):
        random_ground_truth(3, 2, 3, coefs="big")
    with pytest.raises(ValueError, match="order"):
        SymCP(torch.ones(2), torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="coefs must have shape"):
        SymCP(torch.ones(3), torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="share d"):
        cp_inner(torch.ones(1), torch.ones(1, 3), torch.ones(1), torch.ones(1, 4), 3)
    with pytest.raises(ValueError, match="refusing"):
        SymCP(torch.ones(1), torch.ones(1, 300), 3).dense()
