"""Launch plans of the Triton backend: which kernel, grid, constexprs and fixed arguments a call
gets, cached by everything they depend on (options, shapes, strides, dtypes, devices).

- ``state_launch``: the state kernel (one program per sample) with its arguments for this call.
- ``finish_launch``: the one-program batch-scale kernel (``build_state`` alone, normalize="batch").
- ``apply_launch``: the apply kernel for x's and y's layout, reading the scale from the state or,
  with ``batch=True`` (a forward's apply, normalize="batch"), computing it from the counts.

Arguments are passed to ``Plan`` by name (``launch.Plan`` checks them against the kernels'
signatures once, when the plan is made); per call only the tensors and the seed and rate change.
"""
from __future__ import annotations

import struct
from typing import Dict, Tuple

import torch

from ..options import Geometry, Options
from . import launch as _launch
from .apply import PER_CALL as APPLY_PER_CALL
from .apply import apply_nchw_kernel, apply_nhwc_kernel, apply_strided_kernel
from .common import finish_kernel
from .flags import DIAMOND, ELIGIBLE, NORMALIZE, NORMALIZE_SHIFT, P_FROM_PTR, SEED_FROM_PTR
from .launch import Plan, cdiv, magic, pow2
from .state_kernel import state_kernel

# Key width and exponent mask of the float dtypes cam and alpha may have (SPEC.md ranking keys).
KEYS = {torch.float16: (16, 0x7C00), torch.bfloat16: (16, 0x7F80), torch.float32: (32, 0x7F800000),
        torch.float64: (64, 0x7FF0000000000000)}
ITEMSIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}
# The state kernel's program: 256 threads (8 warps), its key tiles [R, STATE_THREADS]. 512 (16 warps:
# half the keys a thread, more warps to hide latency, 56% more instructions a program) is a knob for
# a card to measure (benchmarks/gpu_probe.py state); one program per SM either way at N <= #SMs.
STATE_THREADS = 256
STATE_MAXNREG = 128  # two 256-thread programs fit one multiprocessor
LANES = 1024  # (plane, top pixel) lanes per step of the mask build: 4 per thread
KEYS_BLOCK = 4096  # rows of at most this many keys stay in registers ([16, 256] tiles)
KEY_BLOCKS = (256, 1024, KEYS_BLOCK)  # the key tile sizes compiled
SEED_BLOCKS = (4, 16, 64, 256, 1024)  # top pixels per lane step
DILATE_BLOCK = 1024  # output words per step of the dilation
BATCH_INLINE = 1024  # up to this many samples a forward's apply sums the counts itself
APPLY_BLOCK = 4096  # elements per program of the dense apply kernels
APPLY_WARPS = 2
GRID_Y = 65535  # samples per grid axis 1 (CUDA's limit there); tests lower it to reach the BIG_N path

# What follows a state launch (``Plan.then``, decided once per plan): nothing (normalize "sample" or
# "none"), the batch scale inside the forward's apply (up to BATCH_INLINE samples), or the finish
# kernel first (more samples: one program sums the counts once, rather than every apply program).
THEN_NOTHING, THEN_APPLY_SCALES, THEN_FINISH = 0, 1, 2

STATE_PER_CALL = ("cam_ptr", "alpha_ptr", "seed_ptr", "p_ptr", "slots_ptr", "bits_ptr", "scale_ptr", "dropped_ptr",
                  "rate_ptr", "ws_ptr", "seed_lo", "seed_hi", "p_lo", "p_hi")

STATE_PLANS: Dict[tuple, Plan] = {}
APPLY_PLANS: Dict[tuple, Plan] = {}
FINISH_PLANS: Dict[tuple, Plan] = {}
WORKSPACES: Dict[Tuple[int, int], torch.Tensor] = {}
_RETIRED: list = []
_DUMMIES: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")


def neg_inf_key(bits: int, exp_mask: int) -> int:
    """The signed key of -inf: its pattern (sign | exponent ones) read as a signed integer, with the
    magnitude bits flipped as for every negative float (state_kernel._ukeys before the sign flip)."""
    return (exp_mask - (1 << (bits - 1))) ^ ((1 << (bits - 1)) - 1)


def halves(value: int) -> Tuple[int, int]:
    """An int64 as two signed int32 halves (low, high)."""
    lo, hi = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
    return lo - ((lo >> 31) << 32), hi - ((hi >> 31) << 32)


def float64_bits(value: float) -> int:
    return _I64.unpack(_F64.pack(value))[0]


def flat_stride(sizes, strides):
    """s when element q of the row-major flattening of ``sizes`` sits at q * s (size-1 axes
    ignored), else None."""
    s, run = None, 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size != 1:
            if s is None:
                s = stride
            elif stride != s * run:
                return None
        run *= size
    return 1 if s is None else s


def size_class(n: int, classes) -> int:
    """The smallest of ``classes`` (ascending) holding n, else the largest."""
    for c in classes:
        if n <= c:
            return c
    return classes[-1]


def _dummies(index: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """An int64 and a float64 device tensor for the seed and rate pointers when their values are
    passed by value instead (never read; kept, so the pointer types, and the kernel, stay the same)."""
    t = _DUMMIES.get(index)
    if t is None:
        t = _DUMMIES[index] = (torch.empty((1,), dtype=torch.int64, device=device),
                               torch.empty((1,), dtype=torch.float64, device=device))
    return t


def _workspace(index: int, stream: int, device: torch.device, words: int) -> torch.Tensor:
    """The state kernel's scratch rows for (device, stream), at least ``words`` int32 words. Every
    program writes what it reads (no zeroing, no counter between launches). Grown by doubling; a
    workspace outgrown stays alive (a captured CUDA graph may still use it). Launches on one stream
    run in order, so they can share it."""
    t = WORKSPACES.get((index, stream))
    if t is None or t.numel() < words:
        if t is not None:
            _RETIRED.append(t)
        size = max(words, 2 * (t.numel() if t is not None else 0), 4096)
        t = WORKSPACES[(index, stream)] = torch.empty((size,), dtype=torch.int32, device=device)
    return t


def state_plan(opts: Options, shape, cam: torch.Tensor, alpha: torch.Tensor, seed_on_device: bool,
               p_on_device: bool) -> Plan:
    """The state kernel's launch for this (options, x shape, cam/alpha layout and dtypes)."""
    N, C = int(shape[0]), int(shape[1])
    geo: Geometry = opts.geometry(C, tuple(shape[2:]))
    D, H, W = geo.dims
    P, n, nc = geo.P, geo.top_pixels, geo.top_channels
    rank = len(geo.spatial)
    cam_strides = (0,) * (3 - rank) + tuple(cam.stride()[1:])
    cam_flat = flat_stride((D, H, W), cam_strides)
    cam_bits, cam_exp = KEYS[cam.dtype]
    a_bits, a_exp = KEYS[alpha.dtype]
    eligible = opts.gamma_mode == "eligible"
    diamond = opts.block_shape == "diamond"
    up, down = geo.up, geo.down
    widest = 2 * geo.rho + 1 if diamond else up[2] + down[2] + 1
    wpr = (widest + 31) // 32 + 1  # words a run can touch
    nh = geo.rho + 1 if diamond else 1  # run widths: one scratch copy set each
    # Lanes of the mask build: SB top pixels x PB planes per step (size classes, so that many
    # shapes share one compiled kernel; no more planes than the sample has).
    sb = size_class(n, SEED_BLOCKS)
    pb = max(1, min(LANES // sb, pow2(nc)))
    # Each plane of a copy is padded by GUARD zero words on both sides: at least the largest row
    # shift of the dilation, in words, plus one (a power of two: one compiled kernel serves many shapes).
    max_shift = max(up[0], down[0]) * H * W + max(up[1], down[1]) * W
    guard = pow2((max_shift >> 5) + 2)
    hs_stride = geo.words + 2 * guard
    m_w, s_w = magic(W)
    m_hw, s_hw = magic(H * W)
    m_words, s_words = magic(geo.words)
    ws_stride = cdiv(n + nc + nh * wpr * nc * hs_stride, 4) * 4
    if ws_stride >= 2**31 or P >= 2**31:
        # The kernel addresses a sample's pixels and scratch words with int32 offsets (copies,
        # zeroing, dilation): refuse what they cannot reach rather than wrap around.
        raise ValueError(f"the Triton state kernel addresses a sample's {P} pixels and {ws_stride} words of scratch "
                         "(block copies x top channels) with 32-bit offsets, and this map, block and channel count "
                         "exceed 2**31: run it with backend='torch' (the same results, slower), or a smaller "
                         "block or top_channels")
    single = P <= KEYS_BLOCK and C <= KEYS_BLOCK
    flags = ((ELIGIBLE.value if eligible else 0) | (P_FROM_PTR.value if p_on_device else 0)
             | (SEED_FROM_PTR.value if seed_on_device else 0) | (DIAMOND.value if diamond else 0)
             | (NORMALIZE[opts.normalize] << NORMALIZE_SHIFT.value))
    static = dict(
        gs_bits=float64_bits(opts.gamma_scale), C=C, P=P, H=H, W=W, HW=H * W, n_pix=n, n_chan=nc, words=geo.words,
        ws_stride=ws_stride, numel_sample=C * P,
        scn=cam.stride(0), scd=cam_strides[0], sch=cam_strides[1],
        scw=cam_flat if cam_flat is not None else cam_strides[2],  # the pixel stride when the row is flat
        san=alpha.stride(0), sac=alpha.stride(1), m_w=m_w, s_w=s_w, m_hw=m_hw, s_hw=s_hw,
        lo_d=geo.lo[0], hi_d=geo.hi[0], lo_h=geo.lo[1], hi_h=geo.hi[1], lo_w=geo.lo[2], hi_w=geo.hi[2],
        num_factor=C * P if eligible else P,
        den_factor=geo.area * nc if eligible else geo.area * geo.num_valid,  # eligible: times |S ∩ V| in the kernel
        up_d=up[0], down_d=down[0], up_h=up[1], down_h=down[1], up_w=up[2], rw=up[2] + down[2] + 1, rho=geo.rho,
        flags=flags, hs_stride=hs_stride, m_words=m_words, s_words=s_words,
    )
    constexprs = dict(
        P_BITS=cam_bits, P_EXP=cam_exp, P_NEG_INF=neg_inf_key(cam_bits, cam_exp),
        CAM_LAYOUT=0 if cam_flat == 1 else 1 if cam_flat is not None else 2,
        RP=max(1, size_class(P, KEY_BLOCKS) // STATE_THREADS) if single else 16,
        A_BITS=a_bits, A_EXP=a_exp, A_NEG_INF=neg_inf_key(a_bits, a_exp),
        A_LAYOUT=0 if alpha.stride(1) == 1 or C == 1 else 1,
        RA=max(1, size_class(C, KEY_BLOCKS) // STATE_THREADS) if single else 16,
        SINGLE=single, SB=sb, PB=pb, WPR=wpr, GUARD=guard, ZB=DILATE_BLOCK, THREADS=STATE_THREADS,
    )
    plan = Plan("state", state_kernel, (N, 1, 1), STATE_PER_CALL, static, constexprs, STATE_THREADS // 32,
                maxnreg=STATE_MAXNREG,
                info=dict(flags=flags, ws_stride=ws_stride, ws_words=N * ws_stride, geometry=geo, copies=nh * wpr,
                          batch=opts.normalize == "batch"))
    if opts.normalize == "batch":
        plan.then = THEN_APPLY_SCALES if N <= BATCH_INLINE else THEN_FINISH
    return plan


def state_launch(x, cam, alpha, seed, drop_prob, opts: Options, out, seed_on_device=None, p_on_device=None):
    """(plan, arguments, device index) of the state launch for these tensors (the tools pass
    ``seed_on_device``/``p_on_device`` to plan the device-pointer variants with CPU tensors)."""
    slots, bits, scale, dropped, rate = out
    index = x.get_device()
    seed_dev = seed.device.type != "cpu" if seed_on_device is None else seed_on_device
    p_dev = drop_prob.device.type != "cpu" if p_on_device is None else p_on_device
    # (x's dtype: the scale's pointer type follows it; the kept compiled kernel must match)
    key = (opts, x.shape, x.dtype, cam.dtype, cam.stride(), alpha.dtype, alpha.stride(), seed_dev, p_dev)
    plan = STATE_PLANS.get(key)
    if plan is None:
        if len(STATE_PLANS) >= 1024:
            STATE_PLANS.clear()
        plan = STATE_PLANS[key] = state_plan(opts, x.shape, cam, alpha, seed_dev, p_dev)
    # A seed or rate on the CPU is read here (no device sync) and passed by value; the pointer
    # parameter then gets a device tensor it never reads.
    if seed_dev:
        s_lo = s_hi = 0
        seed_ptr = seed
    else:
        s_lo, s_hi = halves(int(seed.item()))
        seed_ptr = _dummies(index, x.device)[0]
    if p_dev:
        p_lo = p_hi = 0
        p_ptr = drop_prob
    else:
        p_lo, p_hi = halves(float64_bits(drop_prob.item()))
        p_ptr = _dummies(index, x.device)[1]
    stream = _launch._stream(index) if index >= 0 else 0
    ws = WORKSPACES.get((index, stream))
    if ws is None or ws.numel() < plan.info["ws_words"]:
        ws = _workspace(index, stream, x.device, plan.info["ws_words"])
    # (the order of STATE_PER_CALL)
    return plan, (cam, alpha, seed_ptr, p_ptr, slots, bits, scale, dropped, rate, ws, s_lo, s_hi, p_lo, p_hi,
                  *plan.static), index


def finish_launch(shape, dropped, scale):
    """(plan, arguments, device index) of the one-program batch-scale launch."""
    index = dropped.get_device()
    # (the pointers' element types and alignment are compiled into the kernel the plan keeps: the
    # scale is float64 for float64 x, float32 otherwise)
    key = (tuple(shape), dropped.dtype, scale.dtype, dropped.data_ptr() % 16 == 0, scale.data_ptr() % 16 == 0)
    plan = FINISH_PLANS.get(key)
    if plan is None:
        if len(FINISH_PLANS) >= 1024:
            FINISH_PLANS.clear()
        N, C = int(shape[0]), int(shape[1])
        P = 1
        for s in shape[2:]:
            P *= int(s)
        plan = FINISH_PLANS[key] = Plan("finish", finish_kernel, (1, 1, 1), ("dropped_ptr", "scale_ptr"),
                                        dict(N=N, C=C, P=P), dict(FB=1024), 4)
    return plan, (dropped, scale) + plan.static, index


def _layout(strides, C: int, dims) -> str:
    """"nchw" (each sample dense, channels outer), "nhwc" (dense, channels inner) or "strided"."""
    sc = strides[1]
    s = flat_stride(dims, (0,) * (5 - len(strides)) + tuple(strides[2:]))
    P = dims[0] * dims[1] * dims[2]
    if s == 1 and (C == 1 or sc == P):
        return "nchw"
    if s == C and (C == 1 or sc == 1):
        return "nhwc"
    return "strided"


def _pow2_floor(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (int(n).bit_length() - 1)


def _strides5(strides):
    """Strides of (n, c, d, h, w), 0 for the axes a 1-D or 2-D map lacks."""
    return tuple(strides[:2]) + (0,) * (5 - len(strides)) + tuple(strides[2:])


def apply_plan(shape, x_strides, y_strides, dtype, n_chan: int, batch: bool = False) -> Plan:
    """The apply kernel's launch for this shape, these strides and this dtype (``batch``: the
    batch scale from the counts, see apply.py)."""
    N, C = int(shape[0]), int(shape[1])
    spatial = tuple(int(s) for s in shape[2:])
    dims = (1,) * (3 - len(spatial)) + spatial
    D, H, W = dims
    P = D * H * W
    words = (P + 31) // 32
    round_bf16 = dtype == torch.bfloat16 and _launch.INTERPRET
    lx, ly = _layout(x_strides, C, dims), _layout(y_strides, C, dims)
    big_n = N > GRID_Y
    gy, gz = (GRID_Y, cdiv(N, GRID_Y)) if big_n else (N, 1)
    if lx == ly == "nchw" and C * P < 2**31:
        CP = C * P
        vec = max(1, 16 // ITEMSIZE[dtype])
        # Chunks no longer than a plane touch at most two planes (SPAN 2): the cheap masked path.
        block = min(APPLY_BLOCK, _pow2_floor(P)) if P >= 256 else size_class(CP, (256, 1024, APPLY_BLOCK))
        span = 2 if block <= P else pow2(block // P + 2)
        m_p, s_p = magic(P)
        return Plan("apply_nchw", apply_nchw_kernel, (cdiv(CP, block), gy, gz), APPLY_PER_CALL,
                    dict(N=N, C=C, P=P, CP=CP, n_chan=n_chan, words=words, sxn=x_strides[0], syn=y_strides[0],
                         m_p=m_p, s_p=s_p),
                    dict(BLOCK=block, VEC=vec, EVEN=CP % block == 0, SPAN=span, ROWS=P % vec == 0, BIG_N=big_n,
                         GRID_Y=GRID_Y, ROUND_BF16=round_bf16, BATCH=batch),
                    APPLY_WARPS, info=dict(layout="nchw", elements=block, span=span))
    if lx == ly == "nhwc" and C * P < 2**31:
        bc = min(pow2(C), 256)
        bp = max(1, min(APPLY_BLOCK // bc, pow2(P)))
        tiles_c = cdiv(C, bc)
        return Plan("apply_nhwc", apply_nhwc_kernel, (cdiv(P, bp), gy, gz * tiles_c), APPLY_PER_CALL,
                    dict(N=N, C=C, P=P, n_chan=n_chan, words=words, sxn=x_strides[0], syn=y_strides[0]),
                    dict(BP=bp, BC=bc, EVEN_P=P % bp == 0, EVEN_C=C % bc == 0, ONE_WORD=bp <= 32, BIG_N=big_n,
                         GRID_Y=GRID_Y, ROUND_BF16=round_bf16, BATCH=batch),
                    APPLY_WARPS, info=dict(layout="nhwc", elements=bp * bc))
    xs, ys = _strides5(x_strides), _strides5(y_strides)
    fx, fy = flat_stride(dims, xs[2:]), flat_stride(dims, ys[2:])
    flat = fx is not None and fy is not None
    if xs[1] == 1 and C > 1:  # channels innermost: tiles wide along c
        block_c, block_p = min(pow2(C), 64), 32
    else:
        block_p = min(pow2(P), 1024)
        block_c = max(1, min(pow2(C), 2048 // block_p))
    tiles_c, tiles_p = cdiv(C, block_c), cdiv(P, block_p)
    return Plan("apply_strided", apply_strided_kernel, (N * tiles_c * tiles_p, 1, 1), APPLY_PER_CALL,
                dict(N=N, C=C, P=P, H=H, W=W, n_chan=n_chan, words=words, tiles_c=tiles_c, tiles_p=tiles_p,
                     sxn=xs[0], sxc=xs[1], sxd=xs[2], sxh=xs[3], sxw=fx if flat else xs[4],
                     syn=ys[0], syc=ys[1], syd=ys[2], syh=ys[3], syw=fy if flat else ys[4]),
                dict(FLAT=flat, ROUND_BF16=round_bf16, BLOCK_C=block_c, BLOCK_P=block_p, BATCH=batch),
                APPLY_WARPS, info=dict(layout="strided", elements=block_c * block_p))


def apply_launch(x, y, slots, bits, scale, dropped=None):
    """(plan, arguments, device index) of the apply launch for these tensors; with ``dropped`` the
    batch scale is computed from those counts (and stored to ``scale``)."""
    index = x.get_device()
    if dropped is None:
        key = (x.shape, x.stride(), y.stride(), x.dtype, x.data_ptr() & 15, y.data_ptr() & 15, bits.shape[1])
        dropped = scale  # (the pointer is never read then)
    else:
        key = (x.shape, x.stride(), y.stride(), x.dtype, x.data_ptr() & 15, y.data_ptr() & 15, bits.shape[1], True)
    plan = APPLY_PLANS.get(key)
    if plan is None:
        if len(APPLY_PLANS) >= 1024:
            APPLY_PLANS.clear()
        plan = APPLY_PLANS[key] = apply_plan(x.shape, key[1], key[2], x.dtype, bits.shape[1], len(key) == 8)
    return plan, (x, y, slots, bits, scale, dropped) + plan.static, index  # (the order of apply.PER_CALL)
