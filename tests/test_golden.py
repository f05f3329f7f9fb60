"""The ten golden cases of shared/golden (computed apart from this project) on every backend."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import reference

from conftest import DEVICE, assert_bitwise_equal, bits

DATA = Path(__file__).parent / "data"
INDEX = json.loads((DATA / "camdrop_cases.json").read_text())
ARRAYS = np.load(DATA / "camdrop_cases.npz")
CASES = INDEX["cases"]


def exact_in(dtype, *tensors):
    return all(torch.equal(bits(t.to(dtype).to(torch.float32)), bits(t)) for t in tensors)


def load(case):
    k = case["case"]
    get = lambda name: torch.from_numpy(ARRAYS[f"{name}{k}"])  # noqa: E731
    return get("x"), get("cam"), get("alpha"), get("y"), get("dropped"), get("scale")


def test_index_has_ten_cases():
    assert [c["case"] for c in CASES] == list(range(10))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c['case']}")
def test_reference_matches_golden(case):
    x, cam, alpha, y, dropped, scale = load(case)
    assert int(dropped.sum()) == case["dropped"]
    assert_bitwise_equal(reference.camdrop(x, cam, alpha, **case["kwargs"]), y)
    assert torch.equal(reference.camdrop_mask(x, cam, alpha, **case["kwargs"]), dropped)


def dtype_cases():
    """(case, dtype) for every dtype the case's inputs convert to exactly (the golden data is float32)."""
    for case in CASES:
        x, cam, alpha = load(case)[:3]
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            if exact_in(dtype, x, cam, alpha):
                yield pytest.param(case, dtype, id=f"case{case['case']}-{str(dtype)[6:]}")


def test_every_case_runs_in_float32_and_float64():
    assert sum(1 for _ in dtype_cases()) >= 2 * len(CASES)


@pytest.mark.parametrize("case,dtype", list(dtype_cases()))
def test_backend_matches_golden(case, dtype, backend):
    x, cam, alpha, y, dropped, scale = load(case)
    xd, camd, alphad = (t.to(dtype).to(DEVICE) for t in (x, cam, alpha))
    kwargs = dict(case["kwargs"], backend=backend)
    mask = ck.camdrop_mask(xd, camd, alphad, **kwargs)
    assert torch.equal(mask.cpu(), dropped)
    out = ck.camdrop(xd, camd, alphad, **kwargs)
    if dtype == torch.float32:
        assert_bitwise_equal(out.cpu(), y)
        return
    # Other dtypes: one rounding of x * scale, with the scale in the compute dtype. The
    # golden scale is numel / kept rounded to float32; float64 needs the quotient itself.
    if dtype == torch.float64:
        s = scale_float64(dropped, case["kwargs"]["normalize"])
        assert torch.equal(s.to(torch.float32), scale)
    else:
        s = scale
    want = torch.where(dropped, 0.0, x.to(s.dtype) * s[:, None, None, None]).to(dtype)
    assert_bitwise_equal(out.cpu(), want)


def scale_float64(dropped, normalize):
    """SPEC.md step 7 in float64, from a dropped mask."""
    N = dropped.shape[0]
    kept = (~dropped).reshape(N, -1).sum(1).to(torch.float64)
    if normalize == "none":
        return torch.ones(N, dtype=torch.float64)
    if normalize == "batch":
        numel, kept = dropped.numel(), kept.sum().expand(N)
    else:
        numel = dropped[0].numel()
    # Python's float division: one correctly rounded quotient per sample.
    return torch.tensor([numel / k if k else 0.0 for k in kept.tolist()], dtype=torch.float64)
