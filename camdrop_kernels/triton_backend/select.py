"""Stage 1: per-sample top-n selection of pixels (cam) and channels (alpha), by counting.

One program per (sample, row): program (i, 0) ranks the H*W pixels of cam[i], program
(i, 1) the C channels of alpha[i]. Floats are mapped to order-preserving int64 keys
(NaN as -inf, -0.0 as +0.0) and the n-th largest key T is found by bisection on its
bits, most significant first: one counting pass per bit, no sort. Entries above T are
in; entries equal to T fill the remaining places in index order (a prefix count).

Outputs: the top pixels that are valid seed centres, in ascending order, with their
count and the sample's seed rate gamma; the top channels in ascending order, and a
slot map (N, C) giving each top channel its index in that list (-1 elsewhere).
"""
import triton
import triton.language as tl


def key_constants(dtype_bits: int, exp_mask: int) -> dict:
    """Constexprs of the order-preserving key for floats of ``dtype_bits`` bits.

    Negative patterns (sign-extended to int64) have their magnitude bits flipped, so
    signed integer order is float order; -0.0 lands on -1 and is moved to 0 (= +0.0).
    """
    mag = (1 << (dtype_bits - 1)) - 1
    neg_inf_bits = exp_mask - (1 << (dtype_bits - 1))  # sign | exponent ones, sign-extended
    return dict(KEY_BITS=dtype_bits, MAG=mag, EXP_MASK=exp_mask, NEG_INF_KEY=neg_inf_bits ^ mag,
                SIGN=-(1 << (dtype_bits - 1)))


@triton.jit
def _keys(ptr, start, L, MAG: tl.constexpr, EXP_MASK: tl.constexpr, NEG_INF_KEY: tl.constexpr,
          BLOCK: tl.constexpr):
    """Keys of entries start .. start+BLOCK of a row of float bit patterns, and their in-range mask."""
    offs = start + tl.arange(0, BLOCK)
    m = offs < L
    b = tl.load(ptr + offs, mask=m, other=0).to(tl.int64)  # sign-extends
    key = tl.where(b >= 0, b, b ^ MAG)
    key = tl.where(key == -1, 0, key)  # -0.0 -> +0.0
    key = tl.where((b & MAG) > EXP_MASK, NEG_INF_KEY, key)  # NaN -> -inf
    return key, m


@triton.jit
def _count_at_least(ptr, L, cand, keys0, m0, MAG: tl.constexpr, EXP_MASK: tl.constexpr,
                    NEG_INF_KEY: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    """Number of keys >= cand in the row (keys0/m0 hold the whole row when SINGLE)."""
    if SINGLE:
        return tl.sum((m0 & (keys0 >= cand)).to(tl.int32), axis=0)
    else:
        cnt = tl.full((), 0, tl.int32)
        for start in range(0, L, BLOCK):
            key, m = _keys(ptr, start, L, MAG, EXP_MASK, NEG_INF_KEY, BLOCK)
            cnt += tl.sum((m & (key >= cand)).to(tl.int32), axis=0)
        return cnt


@triton.jit
def _threshold(ptr, L, n, KEY_BITS: tl.constexpr, MAG: tl.constexpr, EXP_MASK: tl.constexpr,
               NEG_INF_KEY: tl.constexpr, SIGN: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    """The n-th largest key T of a row (1 <= n <= L).

    T is the largest value with count(key >= T) >= n. Its sign comes first (is T >= 0?),
    then bits KEY_BITS-2 .. 0, each kept when the count with it set still reaches n.
    With the sign fixed, a negative T is SIGN | low, ordered by low like a positive one.
    """
    keys0, m0 = _keys(ptr, 0, L, MAG, EXP_MASK, NEG_INF_KEY, BLOCK)
    zero = tl.full((), 0, tl.int64)
    n_nonneg = _count_at_least(ptr, L, zero, keys0, m0, MAG, EXP_MASK, NEG_INF_KEY, BLOCK, SINGLE)
    base = tl.where(n_nonneg >= n, zero, zero + SIGN)
    low = zero
    for k in range(KEY_BITS - 1):
        bit = (zero + 1) << (KEY_BITS - 2 - k)
        cnt = _count_at_least(ptr, L, base | low | bit, keys0, m0, MAG, EXP_MASK, NEG_INF_KEY, BLOCK, SINGLE)
        low = tl.where(cnt >= n, low | bit, low)
    return base | low


@triton.jit
def _selected(ptr, start, L, T, need, seen_ties, MAG: tl.constexpr, EXP_MASK: tl.constexpr,
              NEG_INF_KEY: tl.constexpr, BLOCK: tl.constexpr):
    """Selection mask of one chunk: key > T, or key == T within the first ``need`` ties of the row.

    ``seen_ties`` counts ties in earlier chunks; returns (selected, ties in this chunk).
    """
    key, m = _keys(ptr, start, L, MAG, EXP_MASK, NEG_INF_KEY, BLOCK)
    tie = (m & (key == T)).to(tl.int32)
    tie_rank = seen_ties + tl.cumsum(tie, axis=0) - tie  # ties before this entry in index order
    sel = (m & (key > T)) | ((tie != 0) & (tie_rank < need))
    return sel, tl.sum(tie, axis=0)


@triton.jit
def select_kernel(
    cam_ptr, alpha_ptr, pix_ptr, pix_count_ptr, gamma_ptr, chan_ptr, slot_ptr,
    HW, H, W, C, n_pix, n_chan, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w,
    p_ptr, p_bits, gs_bits, num_factor, den_factor,
    ELIGIBLE: tl.constexpr, P_FROM_PTR: tl.constexpr,
    CAM_KEY_BITS: tl.constexpr, CAM_MAG: tl.constexpr, CAM_EXP: tl.constexpr, CAM_NEG_INF: tl.constexpr,
    CAM_SIGN: tl.constexpr, CAM_BLOCK: tl.constexpr, CAM_SINGLE: tl.constexpr,
    A_KEY_BITS: tl.constexpr, A_MAG: tl.constexpr, A_EXP: tl.constexpr, A_NEG_INF: tl.constexpr,
    A_SIGN: tl.constexpr, A_BLOCK: tl.constexpr, A_SINGLE: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        # Pixels: keep the top ones that are valid centres, in ascending flat order.
        row = cam_ptr + i * HW
        T = _threshold(row, HW, n_pix, CAM_KEY_BITS, CAM_MAG, CAM_EXP, CAM_NEG_INF, CAM_SIGN, CAM_BLOCK,
                       CAM_SINGLE)
        need = n_pix - _count_at_least(row, HW, T + 1, T, T > T, CAM_MAG, CAM_EXP, CAM_NEG_INF, CAM_BLOCK,
                                       False)
        ties = tl.full((), 0, tl.int32)
        kept = tl.full((), 0, tl.int32)
        for start in range(0, HW, CAM_BLOCK):
            sel, chunk_ties = _selected(row, start, HW, T, need, ties, CAM_MAG, CAM_EXP, CAM_NEG_INF, CAM_BLOCK)
            ties += chunk_ties
            p = start + tl.arange(0, CAM_BLOCK)
            w = p % W
            h = (p // W) % H
            d = p // (W * H)
            ok = sel & (d >= lo_d) & (d < hi_d) & (h >= lo_h) & (h < hi_h) & (w >= lo_w) & (w < hi_w)
            ok32 = ok.to(tl.int32)
            pos = kept + tl.cumsum(ok32, axis=0) - 1
            tl.store(pix_ptr + i * n_pix + pos, p, mask=ok)
            kept += tl.sum(ok32, axis=0)
        tl.store(pix_count_ptr + i, kept)
        # SPEC.md step 4 in float64: drop_prob * gamma_scale * F / (A * n' * |S ∩ V|) ("eligible",
        # F = C*P) or / (A * |V|) ("dropblock", F = P); clamped to [0, 1] (NaN to 0), then float32.
        if P_FROM_PTR:
            prob = tl.load(p_ptr)
        else:
            prob = (tl.full((), 0, tl.int64) + p_bits).to(tl.float64, bitcast=True)
        gs = (tl.full((), 0, tl.int64) + gs_bits).to(tl.float64, bitcast=True)
        num = prob * gs * (tl.full((), 0, tl.int64) + num_factor).to(tl.float64)
        if ELIGIBLE:
            den = (kept.to(tl.int64) * den_factor).to(tl.float64)
        else:
            den = (tl.full((), 0, tl.int64) + den_factor).to(tl.float64)
        g = num / tl.maximum(den, 1.0)  # (den is 0 only when nothing is eligible: the rate is 0 then)
        g = tl.where((den > 0.0) & (g > 0.0), tl.minimum(g, 1.0), 0.0)
        tl.store(gamma_ptr + i, g.to(tl.float32))
    else:
        # Channels: the top ones in ascending order, and each one's slot in that list.
        row = alpha_ptr + i * C
        T = _threshold(row, C, n_chan, A_KEY_BITS, A_MAG, A_EXP, A_NEG_INF, A_SIGN, A_BLOCK, A_SINGLE)
        need = n_chan - _count_at_least(row, C, T + 1, T, T > T, A_MAG, A_EXP, A_NEG_INF, A_BLOCK, False)
        ties = tl.full((), 0, tl.int32)
        taken = tl.full((), 0, tl.int32)
        for start in range(0, C, A_BLOCK):
            sel, chunk_ties = _selected(row, start, C, T, need, ties, A_MAG, A_EXP, A_NEG_INF, A_BLOCK)
            ties += chunk_ties
            c = start + tl.arange(0, A_BLOCK)
            sel32 = sel.to(tl.int32)
            rank = taken + tl.cumsum(sel32, axis=0) - sel32
            tl.store(chan_ptr + i * n_chan + rank, c, mask=sel)
            tl.store(slot_ptr + i * C + c, tl.where(sel, rank, -1), mask=c < C)
            taken += tl.sum(sel32, axis=0)
