"""Unit level: the staircase mask equals a brute-force reference, and every backend matches `math`."""

import pytest
import torch

from xtra.attention import (
    attend,
    backend_status,
    block_causal_mask,
    block_major_order,
    resolve_backend,
    skipped_fraction,
)


def brute_force_mask(grid: int, k: int) -> torch.Tensor:
    """Raster-order definition: token (r, c) sees token (r', c') iff block(r', c') <= block(r, c) in raster
    block order; then re-laid out block-major."""
    nb = grid // k
    t = grid * grid
    raster = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        bi = (i // grid // k) * nb + (i % grid) // k
        for j in range(t):
            bj = (j // grid // k) * nb + (j % grid) // k
            raster[i, j] = bj <= bi
    order = block_major_order(grid, k)
    return raster[order][:, order]


@pytest.mark.parametrize("grid,k", [(4, 1), (4, 2), (6, 2), (6, 3), (8, 2), (8, 4), (12, 3)])
def test_mask_equals_brute_force(grid, k):
    assert torch.equal(block_causal_mask(grid * grid, k * k), brute_force_mask(grid, k))


def test_block_major_order_is_a_permutation_with_contiguous_blocks():
    grid, k = 8, 2
    order = block_major_order(grid, k)
    assert sorted(order.tolist()) == list(range(grid * grid))
    first_block = order[: k * k].tolist()
    assert first_block == [0, 1, grid, grid + 1]
    second_block = order[k * k: 2 * k * k].tolist()
    assert second_block == [2, 3, grid + 2, grid + 3]


def test_mask_is_cached_and_k1_is_causal():
    assert block_causal_mask(16, 4) is block_causal_mask(16, 4)
    assert torch.equal(block_causal_mask(16, 1), torch.ones(16, 16, dtype=torch.bool).tril())


def test_skipped_fraction():
    assert skipped_fraction(64, 64) == 0.0
    assert skipped_fraction(64, 16) == pytest.approx(1 - 10 / 16)


@pytest.mark.parametrize("block_tokens", [1, 4, 16, None])
@pytest.mark.parametrize("backend", ["sdpa"])
def test_backends_match_math_outputs_and_gradients(backend, block_tokens):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref = attend(q, k, v, block_tokens, "math")
    out = attend(q, k, v, block_tokens, backend)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_tokens", [1, 4, 16])
def test_flex_forward_matches_math_on_cpu_and_refuses_backward(block_tokens):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 8) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, block_tokens, "flex"), attend(q, k, v, block_tokens, "math"),
                                   atol=1e-5, rtol=1e-5)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        attend(q, k, v, block_tokens, "flex")


def test_xformers_refuses_cpu_and_auto_picks_sdpa():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        attend(q, q, q, 1, "xformers")
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert "CUDA" in backend_status("cpu")["xformers"]
    with pytest.raises(ValueError, match="not known"):
        resolve_backend("bogus", "cpu")
