"""The "triton" backend: two launches per forward (state, apply), one per backward (apply).

1. ``state_kernel`` (state_kernel.py): SPEC.md steps 1-7 into the saved state of ``state.py``
   (slots, bits, scale) and the statistics (dropped, rate): selection, seed rate, seeds,
   blocks, counts and scales, all in one launch. The bit planes are written whole inside it
   (no zeroing launch), the batch scale comes from the last program to finish (a completion
   counter that resets itself), and the seed and rate are read inside it (from device memory)
   or passed by value (a CPU tensor: read here without a device sync).
2. ``apply_*_kernel`` (apply.py): step 8 in one read of x and one write of y.

Host side: launch plans are cached by (options, shapes, strides, dtypes, devices, ...) and
launched through the compiled kernels' own launchers (launch.py), so a forward costs a few
dictionary look-ups and two launcher calls. Integer arguments are mostly not specialised and
modes are run-time flags, so few kernels get compiled for many shapes. No host synchronisation
and nothing captured that changes between calls: CUDA graphs and torch.compile work. Under
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (small grids there). Maps of every
rank are handled as 3-D (D, H, W). Tools: compile_check.py, report.py, sass.py.
"""
from __future__ import annotations

import struct
from typing import Dict, Tuple

import torch

from ..options import Geometry, Options
from . import launch as _launch
from .apply import apply_nchw_kernel, apply_nhwc_kernel, apply_strided_kernel
from .launch import Plan, cdiv, magic, pow2
from .state_kernel import HIST_WORDS, state_kernel

__all__ = ["build_state", "apply", "forward", "state_launch", "apply_launch", "state_plan", "apply_plan"]

# Key width and exponent mask of the float dtypes cam and alpha may have (SPEC.md ranking keys).
_KEYS = {torch.float16: (16, 0x7C00), torch.bfloat16: (16, 0x7F80), torch.float32: (32, 0x7F800000),
         torch.float64: (64, 0x7FF0000000000000)}
_NORMALIZE = {"batch": 0, "sample": 1, "none": 2}
# Bits of the state kernel's ``flags`` argument (run-time switches: one compiled kernel serves all).
ELIGIBLE, P_FROM_PTR, SEED_FROM_PTR, USE_COUNTER, DIAMOND = 1, 2, 4, 8, 16
NORMALIZE_SHIFT = 6  # two bits: 0 batch, 1 sample, 2 none
_ITEMSIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}
STATE_WARPS = 8
STATE_MAXNREG = 160  # ptxas keeps to 128 registers by itself under Triton 3.6, and spills there
LANES = 4 * 32 * STATE_WARPS  # (plane, seed) lanes per step of the mask build: 4 per thread
KEYS_BLOCK = 4096  # a row of at most this many keys stays in registers through the radix passes
KEY_BLOCKS = (256, 1024, KEYS_BLOCK)  # the key block sizes compiled (longer rows stream in KEYS_BLOCK chunks)
APPLY_BLOCK = 4096  # elements per program of the dense apply kernels
APPLY_WARPS = 2
INTERPRETER_SMS = 2  # "multiprocessors" off the GPU: G > 1 gets exercised (N = 1), grids stay small
GRID_Y = 65535  # samples per grid axis 1 (CUDA's limit there); tests lower it to reach the BIG_N path
SMS_OVERRIDE = 0  # the tools plan for a given card's multiprocessor count (an H100 SXM has 132)

_STATE_PLANS: Dict[tuple, Plan] = {}
_APPLY_PLANS: Dict[tuple, Plan] = {}
_WORKSPACES: Dict[Tuple[int, int], torch.Tensor] = {}
_RETIRED: list = []
WS_ROWS = 16  # workspace words before the scratch rows (state_kernel.WS_ROWS)
_DUMMIES: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
_SMS: Dict[int, int] = {}
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")


def _neg_inf_key(bits: int, exp_mask: int) -> int:
    """The key _keys gives -inf: its pattern (sign | exponent ones) read as a signed integer, with
    the magnitude bits flipped as for every negative float."""
    return (exp_mask - (1 << (bits - 1))) ^ ((1 << (bits - 1)) - 1)


def _halves(value: int) -> Tuple[int, int]:
    """An int64 as two signed int32 halves (low, high)."""
    lo, hi = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
    return lo - ((lo >> 31) << 32), hi - ((hi >> 31) << 32)


def _float64_bits(value: float) -> int:
    return _I64.unpack(_F64.pack(value))[0]


def _flat_stride(sizes, strides):
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


def _size_class(n: int, classes) -> int:
    """The smallest of ``classes`` (ascending) holding n, else the largest."""
    for c in classes:
        if n <= c:
            return c
    return classes[-1]


def _multiprocessors(index: int) -> int:
    if SMS_OVERRIDE:
        return SMS_OVERRIDE
    n = _SMS.get(index)
    if n is None:
        n = INTERPRETER_SMS if index < 0 else torch.cuda.get_device_properties(index).multi_processor_count
        _SMS[index] = n
    return n


def _dummies(index: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """An int64 and a float64 device tensor for the seed and rate pointers when their values are
    passed by value instead (never read; kept, so the pointer types, and the kernel, stay the same)."""
    t = _DUMMIES.get(index)
    if t is None:
        t = _DUMMIES[index] = (torch.empty((1,), dtype=torch.int64, device=device),
                               torch.empty((1,), dtype=torch.float64, device=device))
    return t


def _workspace(index: int, stream: int, device: torch.device, words: int) -> torch.Tensor:
    """The state kernel's workspace for (device, stream): its completion counter (word 0: zero
    between launches, since the last program of each launch resets it) and its scratch rows, at
    least ``words`` int32 words in all. Created zeroed, grown by doubling; a workspace outgrown stays alive
    (a captured CUDA graph may still use it). Launches on one stream run in order, so they can
    share it."""
    t = _WORKSPACES.get((index, stream))
    if t is None or t.numel() < words:
        if t is not None:
            _RETIRED.append(t)
        size = max(words, 2 * (t.numel() if t is not None else 0), 4096)
        t = _WORKSPACES[(index, stream)] = torch.zeros((size,), dtype=torch.int32, device=device)
    return t


def state_plan(opts: Options, shape, x_dtype, cam: torch.Tensor, alpha: torch.Tensor, seed_on_device: bool,
               p_on_device: bool, index: int) -> Plan:
    """The state kernel's launch for this (options, x shape and dtype, cam/alpha layout, device)."""
    N, C = int(shape[0]), int(shape[1])
    geo: Geometry = opts.geometry(C, tuple(shape[2:]))
    D, H, W = geo.dims
    P, n, nc = geo.P, geo.top_pixels, geo.top_channels
    rank = len(geo.spatial)
    cam_strides = (0,) * (3 - rank) + tuple(cam.stride()[1:])
    cam_flat = _flat_stride((D, H, W), cam_strides)
    # Lanes of the mask build: SB eligible pixels x PB planes per step (block sizes come in a few
    # classes, so that many shapes share one compiled kernel).
    sb = _size_class(n, (16, 64, 256, 1024))
    pb = LANES // sb
    # Programs per sample: enough to give every multiprocessor one program, but no fewer planes per
    # program than one step's lanes hold (unless the sample has fewer).
    G = max(1, min(_multiprocessors(index) // N, cdiv(nc, pb)))
    per_prog = cdiv(nc, G)
    G = cdiv(nc, per_prog)
    cam_bits, cam_exp = _KEYS[cam.dtype]
    a_bits, a_exp = _KEYS[alpha.dtype]
    eligible = opts.gamma_mode == "eligible"
    diamond = opts.block_shape == "diamond"
    up, down = geo.up, geo.down
    ext_d, ext_h = up[0] + down[0] + 1, up[1] + down[1] + 1
    widest = 2 * geo.rho + 1 if diamond else up[2] + down[2] + 1
    m_w, s_w = magic(W)
    m_hw, s_hw = magic(H * W)
    # The dilation's scratch copies: NH of the program's planes, each plane padded by GUARD zero
    # words on both sides (at least the largest row shift, in words, plus one).
    nh = geo.rho + 1 if diamond else 1
    max_shift = max(up[0], down[0]) * H * W + max(up[1], down[1]) * W
    guard = pow2((max_shift >> 5) + 2)  # (a power of two: one compiled kernel serves many shapes)
    hs_stride = geo.words + 2 * guard
    m_words, s_words = magic(geo.words)
    ws_stride = cdiv(4 + HIST_WORDS.value + nc + n + nh * per_prog * hs_stride, 4) * 4
    flags = ((ELIGIBLE if eligible else 0) | (P_FROM_PTR if p_on_device else 0)
             | (SEED_FROM_PTR if seed_on_device else 0) | (DIAMOND if diamond else 0)
             | (USE_COUNTER if G > 1 or opts.normalize == "batch" else 0)
             | (_NORMALIZE[opts.normalize] << NORMALIZE_SHIFT))
    static = (
        _float64_bits(opts.gamma_scale), N, C, P, H, W, H * W, n, nc, geo.words, G, per_prog, ws_stride, C * P,
        cam.stride(0), cam_strides[0], cam_strides[1], cam_flat if cam_flat is not None else cam_strides[2],
        alpha.stride(0), alpha.stride(1), m_w, s_w, m_hw, s_hw,
        geo.lo[0], geo.hi[0], geo.lo[1], geo.hi[1], geo.lo[2], geo.hi[2],
        C * P if eligible else P, geo.area * nc if eligible else geo.area * geo.num_valid,
        up[0], down[0], up[1], down[1], up[2], up[2] + down[2] + 1, geo.rho, flags, hs_stride, m_words, s_words,
    )
    constexprs = dict(
        CAM_BITS=cam_bits, CAM_EXP=cam_exp, CAM_NEG_INF=_neg_inf_key(cam_bits, cam_exp),
        CAM_LAYOUT=0 if cam_flat == 1 else 1 if cam_flat is not None else 2,
        A_LAYOUT=0 if alpha.stride(1) == 1 or C == 1 else 1,
        CAM_IDX_BITS=16 if P <= 65536 else 32, CAM_BLOCK=_size_class(P, KEY_BLOCKS), CAM_SINGLE=P <= KEYS_BLOCK,
        A_BITS=a_bits, A_EXP=a_exp, A_NEG_INF=_neg_inf_key(a_bits, a_exp), A_IDX_BITS=16 if C <= 65536 else 32,
        A_BLOCK=_size_class(C, KEY_BLOCKS), A_SINGLE=C <= KEYS_BLOCK, JBITS=max(cam_bits, a_bits),
        WPR=(widest + 31) // 32 + 1, GUARD=guard,
        SB=sb, PB=pb, ZB=2048, FB=256,
    )
    return Plan("state", state_kernel, (N * G, 1, 1), constexprs, static, STATE_WARPS, maxnreg=STATE_MAXNREG,
                info=dict(G=G, flags=flags, planes_per_program=per_prog, ws_stride=ws_stride,
                          ws_words=WS_ROWS + N * G * ws_stride, geometry=geo, runs_d=ext_d, runs_h=ext_h))


def state_launch(x, cam, alpha, seed, drop_prob, opts: Options, out, seed_on_device=None, p_on_device=None):
    """(plan, arguments, device index) of the state launch for these tensors (the tools pass
    ``seed_on_device``/``p_on_device`` to plan the device-pointer variants with CPU tensors)."""
    slots, bits, scale, dropped, rate = out
    index = x.get_device()
    seed_dev = seed.device.type != "cpu" if seed_on_device is None else seed_on_device
    p_dev = drop_prob.device.type != "cpu" if p_on_device is None else p_on_device
    key = (opts, x.shape, x.dtype, cam.dtype, cam.stride(), alpha.dtype, alpha.stride(), seed_dev, p_dev, index)
    plan = _STATE_PLANS.get(key)
    if plan is None:
        if len(_STATE_PLANS) >= 1024:
            _STATE_PLANS.clear()
        plan = _STATE_PLANS[key] = state_plan(opts, x.shape, x.dtype, cam, alpha, seed_dev, p_dev, index)
    # A seed or rate on the CPU is read here (no device sync) and passed by value; the pointer
    # parameter then gets a device tensor it never reads.
    if seed_dev:
        s_lo = s_hi = 0
        seed_ptr = seed
    else:
        s_lo, s_hi = _halves(int(seed.item()))
        seed_ptr = _dummies(index, x.device)[0]
    if p_dev:
        p_lo = p_hi = 0
        p_ptr = drop_prob
    else:
        p_lo, p_hi = _halves(_float64_bits(drop_prob.item()))
        p_ptr = _dummies(index, x.device)[1]
    stream = _launch._stream(index) if index >= 0 else 0
    ws = _WORKSPACES.get((index, stream))
    if ws is None or ws.numel() < plan.info["ws_words"]:
        ws = _workspace(index, stream, x.device, plan.info["ws_words"])
    return plan, (cam, alpha, seed_ptr, p_ptr, slots, bits, scale, dropped, rate, ws, s_lo, s_hi, p_lo, p_hi,
                  *plan.static), index


def build_state(x, cam, alpha, seed, drop_prob, opts: Options, out) -> None:
    """Steps 1-7 into ``out`` = (slots, bits, scale, dropped, rate): one launch."""
    plan, args, index = state_launch(x, cam, alpha, seed, drop_prob, opts, out)
    plan.launch(args, index)


def forward(x, cam, alpha, seed, drop_prob, opts: Options, y, out) -> None:
    """The whole forward, steps 1-8: the state launch, then the apply launch into y."""
    plan, args, index = state_launch(x, cam, alpha, seed, drop_prob, opts, out)
    plan.launch(args, index)
    plan, args, index = apply_launch(x, y, out[0], out[1], out[2])
    plan.launch(args, index)


def _layout(strides, C: int, dims) -> str:
    """"nchw" (each sample dense, channels outer), "nhwc" (dense, channels inner) or "strided"."""
    sc = strides[1]
    s = _flat_stride(dims, (0,) * (5 - len(strides)) + tuple(strides[2:]))
    P = dims[0] * dims[1] * dims[2]
    if s == 1 and (C == 1 or sc == P):
        return "nchw"
    if s == C and (C == 1 or sc == 1):
        return "nhwc"
    return "strided"


def apply_plan(shape, x_strides, y_strides, dtype, n_chan: int) -> Plan:
    """The apply kernel's launch for this shape, these strides and this dtype."""
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
        vec = max(1, 16 // _ITEMSIZE[dtype])
        # Chunks no longer than a plane touch at most two planes (SPAN 2): the cheap masked path.
        block = min(APPLY_BLOCK, _pow2_floor(P)) if P >= 256 else _size_class(CP, (256, 1024, APPLY_BLOCK))
        span = 2 if block <= P else pow2(block // P + 2)
        m_p, s_p = magic(P)
        return Plan("apply_nchw", apply_nchw_kernel, (cdiv(CP, block), gy, gz),
                    dict(BLOCK=block, VEC=vec, EVEN=CP % block == 0, SPAN=span, ROWS=P % vec == 0, BIG_N=big_n,
                         GRID_Y=GRID_Y, ROUND_BF16=round_bf16),
                    (N, C, P, CP, n_chan, words, x_strides[0], y_strides[0], m_p, s_p), APPLY_WARPS,
                    info=dict(layout="nchw", elements=block, span=span))
    if lx == ly == "nhwc" and C * P < 2**31:
        bc = min(pow2(C), 256)
        bp = max(1, min(APPLY_BLOCK // bc, pow2(P)))
        tiles_c = cdiv(C, bc)
        return Plan("apply_nhwc", apply_nhwc_kernel, (cdiv(P, bp), gy, gz * tiles_c),
                    dict(BP=bp, BC=bc, EVEN_P=P % bp == 0, EVEN_C=C % bc == 0, ONE_WORD=bp <= 32, BIG_N=big_n,
                         GRID_Y=GRID_Y, ROUND_BF16=round_bf16),
                    (N, C, P, n_chan, words, x_strides[0], y_strides[0]), APPLY_WARPS,
                    info=dict(layout="nhwc", elements=bp * bc))
    xs, ys = _strides5(x_strides), _strides5(y_strides)
    fx, fy = _flat_stride(dims, xs[2:]), _flat_stride(dims, ys[2:])
    flat = fx is not None and fy is not None
    if xs[1] == 1 and C > 1:  # channels innermost: tiles wide along c
        block_c, block_p = min(pow2(C), 64), 32
    else:
        block_p = min(pow2(P), 1024)
        block_c = max(1, min(pow2(C), 2048 // block_p))
    tiles_c, tiles_p = cdiv(C, block_c), cdiv(P, block_p)
    return Plan("apply_strided", apply_strided_kernel, (N * tiles_c * tiles_p, 1, 1),
                dict(FLAT=flat, ROUND_BF16=round_bf16, BLOCK_C=block_c, BLOCK_P=block_p),
                (C, P, H, W, n_chan, words, tiles_c, tiles_p, xs[0], xs[1], xs[2], xs[3], fx if flat else xs[4],
                 ys[0], ys[1], ys[2], ys[3], fy if flat else ys[4]), APPLY_WARPS,
                info=dict(layout="strided", elements=block_c * block_p))


def _pow2_floor(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (int(n).bit_length() - 1)


def _strides5(strides):
    """Strides of (n, c, d, h, w), 0 for the axes a 1-D or 2-D map lacks."""
    return tuple(strides[:2]) + (0,) * (5 - len(strides)) + tuple(strides[2:])


def apply_launch(x, y, slots, bits, scale):
    """(plan, arguments, device index) of the apply launch for these tensors."""
    index = x.get_device()
    key = (x.shape, x.stride(), y.stride(), x.dtype, x.data_ptr() & 15, y.data_ptr() & 15, bits.shape[1], index)
    plan = _APPLY_PLANS.get(key)
    if plan is None:
        if len(_APPLY_PLANS) >= 1024:
            _APPLY_PLANS.clear()
        plan = _APPLY_PLANS[key] = apply_plan(x.shape, key[1], key[2], x.dtype, bits.shape[1])
    return plan, (x, y, slots, bits, scale) + plan.static, index


def apply(x, y, slots, bits, scale) -> None:
    """Step 8: y = +0.0 where dropped, else x * scale (y may be x): one launch."""
    plan, args, index = apply_launch(x, y, slots, bits, scale)
    plan.launch(args, index)
