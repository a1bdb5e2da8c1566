"""STSS (Eq. 1-3): fast implementation vs the loop reference, offset conventions, gradients, bad input."""

import pytest
import torch

from moss_vla.stss import (
    high_order_stss,
    row_blocks,
    spatial_neighbours,
    stss,
    stss_reference,
    temporal_offsets,
    vectorise,
)

# (B, T, H, W, C), (L, U, V), causal: odd/even T, even L, windows wider than the image, T < L, 1x1x1.
CASES = [
    ((2, 6, 5, 7, 8), (3, 3, 5), False),
    ((1, 8, 4, 4, 6), (4, 3, 3), False),  # even T and even L
    ((2, 5, 3, 4, 5), (5, 9, 11), False),  # spatial window wider than the image
    ((1, 3, 4, 3, 4), (5, 5, 5), False),  # clip shorter than the temporal window
    ((2, 7, 5, 5, 6), (4, 5, 3), True),
    ((1, 8, 6, 6, 16), (5, 9, 9), True),
    ((1, 4, 3, 3, 2), (1, 1, 1), False),
]


@pytest.mark.parametrize("shape, window, causal", CASES)
def test_fast_matches_reference(shape, window, causal):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    fast, ref = stss(x, window, causal), stss_reference(x, window, causal)
    assert fast.shape == (*shape[:4], *window) == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_query_frames_match_full(causal):
    torch.manual_seed(1)
    x = torch.randn(2, 8, 5, 6, 8)
    full = stss(x, (5, 5, 5), causal)
    for t0, t1 in [(7, 8), (0, 1), (2, 6), (3, 3)]:
        part = stss(x, (5, 5, 5), causal, queries=(t0, t1))
        assert part.shape == (2, t1 - t0, 5, 6, 5, 5, 5)
        torch.testing.assert_close(part, full[:, t0:t1], atol=1e-6, rtol=0)


def test_entries_follow_eq2_offsets():
    """S[t,h,w,l,u,v] = cos(F[t,h,w], F[t+dt_l, h+u-U//2, w+v-V//2]), 0 outside the clip or image."""
    torch.manual_seed(2)
    x = torch.randn(1, 6, 5, 5, 7)
    for causal in (False, True):
        L, U, V = 4, 3, 5
        s = stss(x, (L, U, V), causal)
        dts = temporal_offsets(L, causal)
        assert dts == ([-3, -2, -1, 0] if causal else [-2, -1, 0, 1])
        for t, h, w, l, u, v in [(2, 1, 3, 0, 0, 4), (5, 4, 0, 3, 2, 1), (0, 2, 2, 1, 1, 2), (4, 0, 4, 2, 0, 0)]:
            tt, hh, ww = t + dts[l], h + u - U // 2, w + v - V // 2
            inside = 0 <= tt < 6 and 0 <= hh < 5 and 0 <= ww < 5
            expected = torch.cosine_similarity(x[0, t, h, w], x[0, tt, hh, ww], dim=0) if inside else 0.0
            assert float(s[0, t, h, w, l, u, v]) == pytest.approx(float(expected), abs=1e-6)
        # the query itself (dt = 0, centre of (U, V)) has cosine 1
        assert torch.allclose(s[..., dts.index(0), U // 2, V // 2], torch.ones(1, 6, 5, 5))


def test_zero_features_give_zero_not_nan():
    x = torch.randn(1, 4, 3, 3, 5)
    x[0, 1, 1, 1] = 0
    s = stss(x, (3, 3, 3))
    assert torch.isfinite(s).all()
    assert (s[0, 1, 1, 1] == 0).all()  # the zero query
    assert s[0, 2, 1, 1, 0, 1, 1] == 0  # a query whose neighbour is the zero vector
    x.requires_grad_(True)
    stss(x, (3, 3, 3)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_spatial_neighbours_table():
    index, valid = spatial_neighbours(3, 4, 3, 3)
    assert index.shape == valid.shape == (12, 9)
    # position (1, 2) = 6: its neighbour at offset (-1, +1) is (0, 3) = 3, all neighbours inside
    assert index[6, 2] == 3 and valid[6].all()
    # corner (0, 0): only offsets with du, dv >= 0 are inside
    assert valid[0].view(3, 3).tolist() == [[False] * 3, [False, True, True], [False, True, True]]


@pytest.mark.parametrize("causal, queries", [(False, None), (True, (3, 5))])
def test_gradients_match_reference(causal, queries):
    torch.manual_seed(3)
    x = torch.randn(2, 5, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    t0, t1 = queries or (0, 5)
    upstream = torch.randn(2, t1 - t0, 4, 5, 3, 3, 5, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((stss(x, (3, 3, 5), causal, queries) * upstream).sum(), x)
    ref = stss_reference(x, (3, 3, 5), causal)[:, t0:t1]
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), x)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-10, rtol=1e-8)


def test_gradcheck_fast():
    torch.manual_seed(4)
    x = torch.randn(1, 3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: stss(v, (3, 3, 3)), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda v: stss(v, (2, 3, 1), causal=True, queries=(1, 3)), (x,), fast_mode=True)


def test_high_order_no_fusion():
    torch.manual_seed(5)
    x = torch.randn(1, 4, 4, 4, 3)
    s1, s2, s3 = high_order_stss(x, (3, 3, 3), order=3)
    torch.testing.assert_close(s1, stss(x, (3, 3, 3)))
    torch.testing.assert_close(s2, stss(vectorise(s1), (3, 3, 3)))  # S(2) = f(vec(S(1)))
    torch.testing.assert_close(s3, stss(vectorise(s2), (3, 3, 3)))
    assert vectorise(s1).shape == (1, 4, 4, 4, 27)


@pytest.mark.parametrize(
    "make_x, window, kwargs, message",
    [
        (lambda: torch.randn(4, 5, 5, 3), (3, 3, 3), {}, r"\(B, T, H, W, C\)"),
        (lambda: torch.randn(1, 2, 4, 5, 5, 3), (3, 3, 3), {}, r"\(B, T, H, W, C\)"),
        (lambda: torch.randint(0, 5, (1, 2, 3, 3, 2)), (3, 3, 3), {}, "floating-point"),
        (lambda: torch.randn(1, 2, 3, 3, 2), (3, 4, 3), {}, "must be odd"),
        (lambda: torch.randn(1, 2, 3, 3, 2), (3, 3, 2), {}, "must be odd"),
        (lambda: torch.randn(1, 2, 3, 3, 2), (3, 3), {}, "three ints"),
        (lambda: torch.randn(1, 2, 3, 3, 2), (0, 3, 3), {}, ">= 1"),
        (lambda: torch.randn(1, 2, 3, 3, 2), (3, 3, 3), {"queries": (1, 5)}, "0 <= t0 <= t1 <= T"),
    ],
)
def test_bad_input_raises_value_error(make_x, window, kwargs, message):
    with pytest.raises(ValueError, match=message):
        stss(make_x(), window, **kwargs)
    if not kwargs:
        with pytest.raises(ValueError, match=message):
            stss_reference(make_x(), window)


def test_non_contiguous_and_double_input():
    torch.manual_seed(6)
    base = torch.randn(2, 6, 5, 4, 3, dtype=torch.float64)
    x = base.permute(0, 4, 2, 3, 1)  # (B, T=3, H, W, C=6), not contiguous
    out = stss(x, (3, 3, 3))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, stss_reference(x.contiguous(), (3, 3, 3)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("block_rows", [1, 2, 3, 100])
def test_row_blocks_give_the_same_result_and_gradient(block_rows):
    torch.manual_seed(7)
    x = torch.randn(2, 4, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 2, 9, 5, 3, 5, 3, dtype=torch.float64)
    out = stss(x, (3, 5, 3), queries=(1, 3), block_rows=block_rows)
    ref = stss_reference(x, (3, 5, 3))[:, 1:3]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    (g_fast,) = torch.autograd.grad((out * upstream).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), x)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-10, rtol=1e-8)


def test_row_block_layout():
    assert row_blocks(14, 9) == [(0, 14, 0, 14)]  # small grid: one block
    blocks = row_blocks(40, 9)
    assert blocks[0] == (0, 8, 0, 12) and blocks[-1] == (32, 40, 28, 40)
    assert [b[0] for b in blocks[1:]] == [b[1] for b in blocks[:-1]]  # the blocks tile the rows
    with pytest.raises(ValueError, match="block_rows"):
        row_blocks(10, 3, 0)
