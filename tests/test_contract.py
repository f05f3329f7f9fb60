"""Every backend equals the dense reference bit for bit: masks, outputs and gradients, for 1-D,
2-D and 3-D maps.

Inputs are fresh random tensors (hypothesis picks the rank, shapes, parameters, dtype, layout
and CAM style, plus a seed for the data), covering ties, NaN and -0.0 in cam, odd and even
blocks, blocks larger than the map, unequal axes and maps of size 1.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import camdrop_kernels as ck
from camdrop_kernels import reference

from cases import CAM_STYLES, DTYPES, LAYOUTS, make_alpha, make_cam, make_x
from conftest import BACKENDS, DEVICE, INTERPRETED, assert_bitwise_equal, examples, using

FUNCTIONS = {1: (ck.camdrop1d, ck.camdrop1d_mask, reference.camdrop1d, reference.camdrop1d_mask),
             2: (ck.camdrop, ck.camdrop_mask, reference.camdrop, reference.camdrop_mask),
             3: (ck.camdrop3d, ck.camdrop3d_mask, reference.camdrop3d, reference.camdrop3d_mask)}


@st.composite
def top_arg(draw, total):
    kind = draw(st.sampled_from(["default", "int", "float"]))
    if kind == "default":
        return None
    if kind == "int":
        return draw(st.integers(1, total + 2))  # beyond the total is clamped
    return draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 1e-3, 0.7]))


@st.composite
def camdrop_case(draw, small=False):
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    N = draw(st.integers(1, 2 if small else 3))
    C = draw(st.integers(1, 6 if small else 10))
    side = {1: 24 if small else 40, 2: 7 if small else 9, 3: 4 if small else 5}[rank]
    S = tuple(draw(st.integers(1, side)) for _ in range(rank))
    P = 1
    for s in S:
        P *= s
    kwargs = dict(
        drop_prob=draw(st.sampled_from([0.05, 0.3, 0.7, 1.0])),
        block_size=draw(st.integers(1, 10)),
        top_pixels=draw(top_arg(P)),
        top_channels=draw(top_arg(C)),
        block_shape=draw(st.sampled_from(["square", "diamond"])),
        normalize=draw(st.sampled_from(["batch", "sample", "none"])),
        gamma_mode=draw(st.sampled_from(["dropblock", "eligible"])),
        gamma_scale=draw(st.sampled_from([1.0, 3.0, 25.0])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )
    return dict(rank=rank, shape=(N, C) + S, dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(LAYOUTS)), cam_style=draw(st.sampled_from(CAM_STYLES)),
                cam_dtype=draw(st.sampled_from(DTYPES)), data_seed=draw(st.integers(0, 2**32 - 1)), kwargs=kwargs)


def build(case, device=DEVICE):
    gen = torch.Generator().manual_seed(case["data_seed"])
    N, C, *S = case["shape"]
    x = make_x(case["shape"], case["dtype"], case["layout"], gen, device)
    cam = make_cam(N, S, case["cam_style"], case["cam_dtype"], gen, device)
    alpha = make_alpha(N, C, case["cam_style"], case["cam_dtype"], gen, device)
    return x, cam, alpha


def for_random_cases(implementation, examples_native, examples_interpreted, check):
    """Run ``check(case, x, cam, alpha)`` on hypothesis-drawn cases under one implementation
    (fewer and smaller cases where it runs in Triton's interpreter)."""
    interpreted = implementation in INTERPRETED

    @settings(max_examples=examples(examples_interpreted if interpreted else examples_native), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(camdrop_case(small=interpreted))
    def run(case):
        with using(implementation):
            check(case, *build(case))

    run()


@pytest.mark.parametrize("implementation", BACKENDS)
def test_backend_equals_reference(implementation):
    def check(case, x, cam, alpha):
        fn, mask_fn, ref, ref_mask = FUNCTIONS[case["rank"]]
        kw = case["kwargs"]
        want_mask = ref_mask(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
        want = ref(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
        assert torch.equal(mask_fn(x, cam, alpha, **kw).cpu(), want_mask)
        y = fn(x, cam, alpha, **kw)
        assert_bitwise_equal(y, want)
        if case["layout"] == "contiguous" or (case["layout"] == "channels_last" and case["rank"] > 1):
            assert y.stride() == x.stride(), "output keeps x's memory format"

    for_random_cases(implementation, 150, 60, check)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_gradient_equals_reference(implementation):
    def check(case, x, cam, alpha):
        fn, _, ref, _ = FUNCTIONS[case["rank"]]
        kw = case["kwargs"]
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(case["data_seed"] + 1)).to(x.dtype)
        xr = x.detach().cpu().requires_grad_()
        ref(xr, cam.cpu(), alpha.cpu(), **kw).backward(dy)
        xb = x.detach().requires_grad_()
        fn(xb, cam, alpha, **kw).backward(dy.to(x.device))
        assert_bitwise_equal(xb.grad, xr.grad, "gradient")

    for_random_cases(implementation, 40, 20, check)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_inplace_equals_out_of_place(implementation):
    def check(case, x, cam, alpha):
        fn = FUNCTIONS[case["rank"]][0]
        kw = case["kwargs"]
        want = fn(x, cam, alpha, **kw)
        x2 = x.clone()
        got = fn(x2, cam, alpha, **kw, inplace=True)
        assert got is x2
        assert_bitwise_equal(x2, want)

    for_random_cases(implementation, 40, 20, check)
