"""The golden cases of shared/golden (computed apart from this project) on every backend: ten
2-D cases and sixteen 1-D/2-D/3-D cases."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import reference

from conftest import DEVICE, assert_bitwise_equal, bits

DATA = Path(__file__).parent / "data"
FUNCTIONS = {1: (ck.camdrop1d, ck.camdrop1d_mask, reference.camdrop1d, reference.camdrop1d_mask),
             2: (ck.camdrop, ck.camdrop_mask, reference.camdrop, reference.camdrop_mask),
             3: (ck.camdrop3d, ck.camdrop3d_mask, reference.camdrop3d, reference.camdrop3d_mask)}


def _load(name):
    index = json.loads((DATA / f"{name}.json").read_text())
    arrays = np.load(DATA / f"{name}.npz")
    return [dict(case, file=name, arrays=arrays) for case in index["cases"]]


CASES = _load("camdrop_cases") + _load("camdrop_nd_cases")


def case_id(case):
    return f"{case['file'].replace('camdrop_', '').replace('_cases', '') or '2d'}{case['case']}"


def tensors(case):
    k, arrays = case["case"], case["arrays"]
    get = lambda name: torch.from_numpy(arrays[f"{name}{k}"])  # noqa: E731
    return get("x"), get("cam"), get("alpha"), get("y"), get("dropped"), get("scale")


def test_case_counts():
    assert sum(c["file"] == "camdrop_cases" for c in CASES) == 10
    nd = [c for c in CASES if c["file"] == "camdrop_nd_cases"]
    assert {len(c["shape"]) - 2 for c in nd} == {1, 2, 3}
    # The json keeps ints and floats apart (`4` vs `4.0` are different requests): json.loads does too.
    assert any(isinstance(c["kwargs"].get("top_channels"), float) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_matches_golden(case):
    x, cam, alpha, y, dropped, scale = tensors(case)
    _, _, ref, ref_mask = FUNCTIONS[x.dim() - 2]
    assert int(dropped.sum()) == case["dropped"]
    assert_bitwise_equal(ref(x, cam, alpha, **case["kwargs"]), y)
    assert torch.equal(ref_mask(x, cam, alpha, **case["kwargs"]), dropped)


def dtype_cases():
    """(case, dtype) for every dtype the case's inputs convert to exactly (the golden data is float32)."""
    for case in CASES:
        x, cam, alpha = tensors(case)[:3]
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            if all(torch.equal(bits(t.to(dtype).to(torch.float32)), bits(t)) for t in (x, cam, alpha)):
                yield pytest.param(case, dtype, id=f"{case_id(case)}-{str(dtype)[6:]}")


def test_every_case_runs_in_float32_and_float64():
    assert sum(1 for _ in dtype_cases()) >= 2 * len(CASES)


@pytest.mark.parametrize("case,dtype", list(dtype_cases()))
def test_backend_matches_golden(case, dtype, backend):
    x, cam, alpha, y, dropped, scale = tensors(case)
    fn, mask_fn, _, _ = FUNCTIONS[x.dim() - 2]
    xd, camd, alphad = (t.to(dtype).to(DEVICE) for t in (x, cam, alpha))
    assert torch.equal(mask_fn(xd, camd, alphad, **case["kwargs"]).cpu(), dropped)
    out = fn(xd, camd, alphad, **case["kwargs"])
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
    shape = (-1,) + (1,) * (x.dim() - 1)
    want = torch.where(dropped, 0.0, x.to(s.dtype) * s.reshape(shape)).to(dtype)
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
