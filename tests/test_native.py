"""The native CPU kernels' own properties: the ranking's cost bound on hostile inputs, and what the
build reports about itself."""
import math
import random

import pytest
import torch
from torch.utils.dlpack import to_dlpack

from conftest import HAS_NATIVE
from native_hooks import load_hooks

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
    hooks = load_hooks()

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
            picked, visits = hooks.top_n(to_dlpack(values), n)
            want = torch.sort(torch.where(values.isnan(), float("-inf"), values), descending=True,
                              stable=True).indices[:n].sort().values.tolist()
            assert picked == want, (name, n)
            # Heap (n <= L/32): about L log2(n) in the worst case; radix: at most 16 visits an entry.
            assert visits <= 16 * L + 4 * L * math.log2(n + 1), (name, n, visits)


def test_ranking_handles_every_float_dtype_and_special_value():
    hooks = load_hooks()

    row = torch.tensor([float("nan"), -0.0, 0.0, float("-inf"), float("inf"), 1.5, -1.5, 1.5, float("nan"), 0.0])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for n in range(1, len(row) + 1):
            picked, _ = hooks.top_n(to_dlpack(row.to(dtype)), n)
            key = torch.where(row.isnan(), float("-inf"), row) + 0.0
            want = torch.sort(key, descending=True, stable=True).indices[:n].sort().values.tolist()
            assert picked == want, (dtype, n)


def test_threads_come_from_torchs_pool_when_it_is_openmp():
    info = load_hooks().info()
    if "OpenMP" in torch.__config__.parallel_info():
        assert info["openmp"], "torch runs OpenMP: the kernels must find its GOMP entry points"


def test_ranking_of_32_bit_rows_on_hostile_and_tied_inputs():
    """The 32-bit keys (float32, bfloat16, float16 rows) take their own radix path (vectorised
    compaction and ranks where the CPU has AVX2); the hook also checks that the build's slot
    numbering (nth_key, then take_top) agrees with the marks. Ties split at the threshold included."""
    hooks = load_hooks()

    rng = random.Random(7)
    for L in (40, 64, 200, 1024, 2051):
        rows = {
            "ascending": list(range(L)),
            "descending": list(range(L, 0, -1)),
            "equal": [1.0] * L,
            "two values": [float(rng.random() < 0.5) for _ in range(L)],
            "few values": [float(rng.randrange(5)) for _ in range(L)],
            "organ pipe": [min(i, L - i) for i in range(L)],
            "random": [rng.gauss(0, 1) for _ in range(L)],
            "specials": [rng.choice([float("nan"), -0.0, 0.0, float("inf"), float("-inf"), 1.0, -1.0])
                         for _ in range(L)],
        }
        for name, row in rows.items():
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                values = torch.tensor(row, dtype=torch.float64).to(dtype)
                key = torch.where(values.isnan(), float("-inf"), values.double()) + 0.0
                order = torch.sort(key, descending=True, stable=True).indices
                for n in sorted({1, L // 31 + 1, L // 8, L // 3, L // 2 + 1, L - 1}):
                    if not 1 <= n <= L:
                        continue
                    picked, visits = hooks.top_n(to_dlpack(values), n)
                    assert picked == order[:n].sort().values.tolist(), (name, dtype, L, n)
                    assert visits <= 16 * L + 4 * L * math.log2(n + 1), (name, n, visits)


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("threads", [1, 2])
def test_forward_paths_match_the_reference_bit_for_bit(threads):
    """The fused forward (one parallel region: build, barrier, scales, barrier, apply) on the shapes
    that pick each apply path: small dense maps (one multiply, then the top planes masked), larger
    dense maps, channels_last (pixels where every top channel is dropped multiplied and masked in
    one pass, the others fixed by stores), a last mask word only partly used, 1-D and 3-D maps;
    every dtype, both gamma modes, saturated and sparse rates, samples with nothing dropped."""
    import camdrop_kernels as ck
    from camdrop_kernels import reference

    cases = [((4, 96, 7, 7), False), ((3, 64, 14, 14), False), ((2, 24, 23, 25), False),
             ((2, 40, 12, 12), True), ((3, 48, 5, 13), True), ((2, 16, 33, 40), True),
             ((3, 33, 70), False), ((2, 16, 4, 6, 7), False), ((2, 16, 4, 6, 7), True)]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k, (shape, cl) in enumerate(cases):
            g = torch.Generator().manual_seed(k)
            x = torch.randn(shape, generator=g)
            cam = torch.randn((shape[0],) + shape[2:], generator=g)
            alpha = torch.randn(shape[:2], generator=g)
            alpha[0, ::3] = alpha[0, 0]  # ties in the channel ranking
            rank = len(shape) - 2
            fn = {1: ck.camdrop1d, 2: ck.camdrop, 3: ck.camdrop3d}[rank]
            ref = {1: reference.camdrop1d, 2: reference.camdrop, 3: reference.camdrop3d}[rank]
            for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
                xd = x.to(dtype)
                if cl:
                    xd = xd.contiguous(memory_format=torch.channels_last if rank == 2 else
                                       torch.channels_last_3d) if rank >= 2 else xd.transpose(1, 2).contiguous().transpose(1, 2)
                for p, mode, block in ((0.1, "eligible", 7), (0.9, "eligible", 3), (0.3, "dropblock", 3),
                                       (0.05, "dropblock", 7)):
                    kw = dict(block_size=block, gamma_mode=mode, seed=1000 * k + int(p * 100))
                    got = fn(xd, cam, alpha, p, **kw)
                    want = ref(xd, cam, alpha, p, **kw)
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert torch.equal(_bits(got), _bits(want)), (shape, cl, dtype, p, mode, block)
    finally:
        torch.set_num_threads(old)


def test_the_fused_forward_finds_the_pools_barrier():
    info = load_hooks().info()
    if info["openmp"]:
        assert info["barrier"], "with torch's OpenMP pool the forward runs in one parallel region"


# ------------------------------------------------------------------------------------------------
# The product and its hooks; what the entry points refuse (issue 21 items 1 and 14)
# ------------------------------------------------------------------------------------------------
def test_the_product_has_no_test_hooks():
    """The hooks live in _native_testing (built with -DCAMDROP_TESTING), not in _native."""
    from camdrop_kernels import _native

    assert {"build", "apply", "forward"} <= set(dir(_native))
    assert not {"top_n", "uniform", "info"} & set(dir(_native))


def test_the_hooks_extension_holds_only_hooks():
    hooks = load_hooks()
    assert {"top_n", "uniform", "info"} <= set(dir(hooks))
    assert not {"build", "apply", "forward"} & set(dir(hooks))


def test_native_testing_extension_is_built_in_ci():
    import os

    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    load_hooks()  # fails in CI when absent


def _state(N=2, C=8, S=(6, 7), n_chan=2, scale_dtype=torch.float32):
    P = math.prod(S)
    return [torch.empty(N, C, dtype=torch.int32), torch.empty(N, n_chan, (P + 31) // 32, dtype=torch.int32),
            torch.empty(N, dtype=scale_dtype), torch.empty(N, dtype=torch.int64), torch.empty(N, dtype=torch.float32)]


def _args(N=2, C=8, S=(6, 7), dtype=torch.float32):
    """Valid (build, apply, forward) argument lists, tensors first, then the scalars."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn((N, C) + S, generator=g).to(dtype)
    cam, alpha = torch.randn((N,) + S, generator=g), torch.randn(N, C, generator=g)
    seed, p = torch.tensor(5), torch.tensor(0.7, dtype=torch.float64)
    scalars = [3, 0, 4, 2, 1, 1.0, 0, 1]
    build = [cam, alpha, seed, p] + _state(N, C, S, scale_dtype=torch.float64 if dtype == torch.float64
                                           else torch.float32) + scalars
    from camdrop_kernels import _native

    _native.build(*[to_dlpack(a) if isinstance(a, torch.Tensor) else a for a in build])
    slots, bits, scale = build[4:7]
    apply = [x, torch.empty_like(x), slots, bits, scale, 1]
    forward = [x, torch.empty_like(x), cam, alpha, seed, p] + _state(N, C, S, scale_dtype=scale.dtype) + scalars
    return {"build": build, "apply": apply, "forward": forward}


_NAMES = {"build": ["cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped", "rate"],
          "apply": ["x", "y", "slots", "bits", "scale"],
          "forward": ["x", "y", "cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped", "rate"]}


def _call(name, args):
    from camdrop_kernels import _native

    return getattr(_native, name)(*[to_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args])


def _misaligned(t):
    """t's values at a data pointer one byte past an aligned one (torch.frombuffer(..., offset=1))."""
    m = torch.frombuffer(bytearray(t.numel() * t.element_size() + 1), dtype=t.dtype, offset=1, count=t.numel())
    return m.view(t.shape).copy_(t)


@pytest.mark.parametrize("name", ["build", "apply", "forward"])
def test_misaligned_data_pointers_are_refused_by_name(name):
    """Issue 21 item 14: a tensor whose data pointer is not aligned to its element size reached typed
    loads and stores (UBSan: row_keys, scale_run, zero_run, zero_row, sample_scale, mask_plane_f32,
    plane_any). Each argument is now refused, by name; the Python side makes aligned copies."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        args = _args(dtype=dtype)[name]
        for k, arg_name in enumerate(_NAMES[name]):
            bad = list(args)
            bad[k] = _misaligned(args[k])
            size = args[k].element_size()
            with pytest.raises(ValueError, match=f"^{arg_name}'s data pointer is not aligned to its {size}-byte"):
                _call(name, bad)


@pytest.mark.parametrize("name", ["build", "apply", "forward"])
def test_tensors_without_storage_are_refused_by_name(name):
    """Issue 21 item 1: torch._efficientzerotensor (what torch.sgn's backward hands autograd as dy)
    has no storage: its DLPack data pointer is 0, which the apply read (SIGSEGV). Every argument with
    elements and a null pointer is refused, by name."""
    args = _args()[name]
    for k, arg_name in enumerate(_NAMES[name]):
        bad = list(args)
        bad[k] = torch._efficientzerotensor(args[k].shape, dtype=args[k].dtype)
        assert bad[k].data_ptr() == 0
        with pytest.raises(ValueError, match=f"^{arg_name} has {args[k].numel()} elements but a null data pointer"):
            _call(name, bad)


def test_empty_tensors_are_accepted_without_touching_memory():
    """Tensors without elements (whatever their data pointer, even null) never reach memset/memcpy:
    build with no samples, no channels or no pixels, apply and forward on an empty x."""
    seed, p = torch.tensor(5), torch.tensor(0.7, dtype=torch.float64)

    def zero(shape):  # no elements: a null data pointer; else real values
        return torch._efficientzerotensor(shape) if math.prod(shape) == 0 else torch.randn(shape)

    for N, C, S in ((0, 8, (6, 7)), (2, 0, (6, 7)), (2, 8, (0, 7)), (0, 0, (0,))):
        P = math.prod(S)
        cam, alpha = zero((N,) + S), zero((N, C))
        state = _state(N, C, S, n_chan=1)
        _call("build", [cam, alpha, seed, p] + state + [3, 0, 1, 1, 1, 1.0, 0, 2])
        x = zero((N, C) + S)
        y = torch.empty((N, C) + S)
        _call("apply", [x, y, state[0], state[1], state[2], 2])
        _call("forward", [x, y, cam, alpha, seed, p] + _state(N, C, S, n_chan=1) + [3, 0, 1, 1, 1, 1.0, 0, 2])
        if N and C and not P:
            assert torch.equal(state[3], torch.zeros(N, dtype=torch.int64))  # nothing to drop


def test_huge_strides_on_size_one_axes_give_the_same_output():
    """A size-1 axis may carry any stride (torch.as_strided allows 2**62): the layout tests multiply
    sizes by strides, which overflowed int64 there; they now check the product."""
    x = torch.randn(2, 8, 2, 1, 5)
    want = torch.empty_like(x)
    cam, alpha = torch.randn(2, 2, 1, 5), torch.randn(2, 8)
    state = _state(2, 8, (2, 1, 5))
    scalars = [3, 0, 4, 2, 1, 1.0, 0, 1]
    _call("build", [cam, alpha, torch.tensor(5), torch.tensor(0.9, dtype=torch.float64)] + state + scalars)
    _call("apply", [x, want, state[0], state[1], state[2], 1])
    for stride in (2**62, 2**63 - 1, 2**40):
        odd = x.as_strided(x.shape, (80, 10, 5, stride, 1))
        y = torch.empty_like(x).as_strided(x.shape, (80, 10, 5, stride, 1))
        _call("apply", [odd, y, state[0], state[1], state[2], 1])
        assert torch.equal(_bits(y.contiguous()), _bits(want)), stride


def test_strides_reaching_past_the_limit_are_refused():
    """A DLPack producer may describe elements past 2**62 bytes (numpy's as_strided checks nothing):
    the index products would overflow, so such tensors are refused before any access."""
    import numpy as np

    args = _args()["apply"]
    a = np.zeros(4, dtype=np.float32)
    huge = np.lib.stride_tricks.as_strided(a, shape=tuple(args[0].shape), strides=(0, 0, 2**62, 4))
    from camdrop_kernels import _native

    with pytest.raises(ValueError, match="^x's strides reach past 2\\*\\*62 bytes"):
        _native.apply(huge.__dlpack__(), *[to_dlpack(t) for t in args[1:5]], 1)
