"""The native CPU kernels' own properties: the ranking's cost bound on hostile inputs, and what the
build reports about itself."""
import math
import random

import pytest
import torch
from torch.utils.dlpack import to_dlpack

from conftest import HAS_NATIVE

pytestmark = pytest.mark.skipif(not HAS_NATIVE, reason="the native extension is not built")


def old_quickselect(values, k):
    """The ranking the project shipped before (middle-pivot Hoare quickselect for the k-th largest),
    ported to count its comparisons."""
    a, count = list(values), 0

    def greater(x, y):
        nonlocal count
        count += 1
        return x > y

    lo, hi = 0, len(a) - 1
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i, j = lo, hi
        while i <= j:
            while greater(a[i], pivot):
                i += 1
            while greater(pivot, a[j]):
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i, j = i + 1, j - 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return count


def crafted_for_old_quickselect(L, k):
    """A CAM row that drives old_quickselect quadratic: McIlroy's adversary ("A killer adversary for
    quicksort", 1999) answers its comparisons so that every pivot it picks ends up the smallest
    value left; the values it commits to form the hostile input."""
    gas = float("inf")
    val = [gas] * L
    solid = 0
    candidate = None
    order = list(range(L))

    class Item:
        __slots__ = ("i",)

        def __init__(self, i):
            self.i = i

        def __gt__(self, other):
            nonlocal solid, candidate
            x, y = self.i, other.i
            if val[x] == gas and val[y] == gas:  # freeze one: the pivot candidate
                frozen = x if x == candidate else y
                val[frozen] = solid
                solid += 1
            if val[x] == gas:
                candidate = x
            elif val[y] == gas:
                candidate = y
            return val[x] > val[y]

    old_quickselect([Item(i) for i in order], k)
    top = solid
    return [v if v != gas else top + i for i, v in enumerate(val)]  # the rest: larger, distinct


def test_ranking_is_linear_on_the_input_that_made_the_old_one_quadratic():
    """Regression: a crafted CAM made the old quickselect quadratic (95 s a call at 1024x1024). The
    radix/heap ranking visits each entry a bounded number of times on it, and on other hostile
    shapes (sorted, reversed, all equal, two values, organ pipe)."""
    from camdrop_kernels import _native

    L = 2048
    k = L // 2
    crafted = crafted_for_old_quickselect(L, k)
    assert old_quickselect(crafted, k) > L * L / 16, "the crafted row must be hostile to the old code"
    rng = random.Random(5)
    rows = {
        "crafted": crafted,
        "ascending": list(range(L)),
        "descending": list(range(L, 0, -1)),
        "equal": [1.0] * L,
        "two values": [float(rng.random() < 0.5) for _ in range(L)],
        "organ pipe": [min(i, L - i) for i in range(L)],
        "random": [rng.gauss(0, 1) for _ in range(L)],
    }
    for name, row in rows.items():
        values = torch.tensor(row, dtype=torch.float64)
        for n in (1, 16, L // 8, L // 2, L - 1):
            picked, visits = _native.top_n(to_dlpack(values), n)
            want = torch.sort(torch.where(values.isnan(), float("-inf"), values), descending=True,
                              stable=True).indices[:n].sort().values.tolist()
            assert picked == want, (name, n)
            # Heap (n <= L/32): about L log2(n) in the worst case; radix: at most 16 visits an entry.
            assert visits <= 16 * L + 4 * L * math.log2(n + 1), (name, n, visits)


def test_ranking_handles_every_float_dtype_and_special_value():
    from camdrop_kernels import _native

    row = torch.tensor([float("nan"), -0.0, 0.0, float("-inf"), float("inf"), 1.5, -1.5, 1.5, float("nan"), 0.0])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for n in range(1, len(row) + 1):
            picked, _ = _native.top_n(to_dlpack(row.to(dtype)), n)
            key = torch.where(row.isnan(), float("-inf"), row) + 0.0
            want = torch.sort(key, descending=True, stable=True).indices[:n].sort().values.tolist()
            assert picked == want, (dtype, n)


def test_threads_come_from_torchs_pool_when_it_is_openmp():
    from camdrop_kernels import _native

    info = _native.info()
    if "OpenMP" in torch.__config__.parallel_info():
        assert info["openmp"], "torch runs OpenMP: the kernels must find its GOMP entry points"
