"""Every backend equals the dense reference bit for bit: masks, outputs and gradients.

Inputs are fresh random tensors (hypothesis picks shapes, parameters, dtype, layout and
CAM style, plus a seed for the data), covering ties, NaN and -0.0 in cam, odd and even
blocks, blocks larger than the map, H != W and 1x1 maps.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import camdrop_kernels as ck
from camdrop_kernels import reference

from cases import CAM_STYLES, DTYPES, LAYOUTS, make_alpha, make_cam, make_x
from conftest import BACKENDS, DEVICE, INTERPRETED, assert_bitwise_equal, examples, variant


@st.composite
def top_arg(draw, total):
    kind = draw(st.sampled_from(["default", "int", "float"]))
    if kind == "default":
        return None
    if kind == "int":
        return draw(st.integers(1, total + 2))  # beyond the total is clamped
    return draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 1e-3]))


@st.composite
def camdrop_case(draw, backend, small=False):
    N = draw(st.integers(1, 2 if small else 3))
    C = draw(st.integers(1, 6 if small else 10))
    H = draw(st.integers(1, 7 if small else 9))
    W = draw(st.integers(1, 7 if small else 9))
    kwargs = dict(
        drop_prob=draw(st.sampled_from([0.05, 0.3, 0.7, 1.0])),
        block_size=draw(st.integers(1, 10)),
        top_pixels=draw(top_arg(H * W)),
        top_channels=draw(top_arg(C)),
        block_shape=draw(st.sampled_from(["square", "diamond"])),
        normalize=draw(st.sampled_from(["batch", "sample", "none"])),
        gamma_mode=draw(st.sampled_from(["dropblock", "eligible"])),
        gamma_scale=draw(st.sampled_from([1.0, 3.0, 25.0])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )
    return dict(
        shape=(N, C, H, W),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(LAYOUTS)),
        cam_style=draw(st.sampled_from(CAM_STYLES)),
        cam_dtype=draw(st.sampled_from(DTYPES)),
        data_seed=draw(st.integers(0, 2**32 - 1)),
        backend="torch" if backend == "torch-pure" else backend,
        kwargs=kwargs,
    )


def build(case, device=DEVICE):
    gen = torch.Generator().manual_seed(case["data_seed"])
    N, C, H, W = case["shape"]
    x = make_x(case["shape"], case["dtype"], case["layout"], gen, device)
    cam = make_cam(N, H, W, case["cam_style"], case["cam_dtype"], gen, device)
    alpha = make_alpha(N, C, case["cam_style"], case["cam_dtype"], gen, device)
    return x, cam, alpha


def for_random_cases(implementation, examples_native, examples_interpreted, check):
    """Run ``check(x, cam, alpha, kwargs, backend)`` on hypothesis-drawn cases for one implementation
    (fewer and smaller cases where it runs in Triton's interpreter)."""
    interpreted = implementation in INTERPRETED

    @settings(max_examples=examples(examples_interpreted if interpreted else examples_native), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(camdrop_case(implementation, small=interpreted))
    def run(case):
        x, cam, alpha = build(case)
        check(case, x, cam, alpha, case["kwargs"], case["backend"])

    with variant(implementation):
        run()


@pytest.mark.parametrize("implementation", BACKENDS)
def test_backend_equals_reference(implementation):
    def check(case, x, cam, alpha, kw, backend):
        want_mask = reference.camdrop_mask(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
        want = reference.camdrop(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
        mask = ck.camdrop_mask(x, cam, alpha, **kw, backend=backend)
        assert torch.equal(mask.cpu(), want_mask)
        y = ck.camdrop(x, cam, alpha, **kw, backend=backend)
        assert_bitwise_equal(y, want)
        if case["layout"] in ("contiguous", "channels_last"):
            assert y.stride() == x.stride(), "output keeps x's memory format"

    for_random_cases(implementation, 150, 80, check)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_gradient_equals_reference(implementation):
    def check(case, x, cam, alpha, kw, backend):
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(case["data_seed"] + 1)).to(x.dtype)
        xr = x.detach().cpu().requires_grad_()
        reference.camdrop(xr, cam.cpu(), alpha.cpu(), **kw).backward(dy)
        xb = x.detach().requires_grad_()
        ck.camdrop(xb, cam, alpha, **kw, backend=backend).backward(dy.to(x.device))
        assert_bitwise_equal(xb.grad, xr.grad, "gradient")

    for_random_cases(implementation, 40, 25, check)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_inplace_equals_out_of_place(implementation):
    def check(case, x, cam, alpha, kw, backend):
        want = ck.camdrop(x, cam, alpha, **kw, backend=backend)
        x2 = x.clone()
        got = ck.camdrop(x2, cam, alpha, **kw, inplace=True, backend=backend)
        assert got is x2
        assert_bitwise_equal(x2, want)

    for_random_cases(implementation, 40, 25, check)
