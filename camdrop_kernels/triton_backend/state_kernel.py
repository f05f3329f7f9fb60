"""SPEC.md steps 1-7 in one kernel: one program (CTA, THREADS / 32 warps: 8, or 16 to try) per sample,
no atomics.

1. Selection (steps 1-2). cam[i] and alpha[i] become order-preserving unsigned keys (NaN as
   -inf, -0.0 as +0.0; 16 bits for float16/bfloat16, 32 for float32, 64 for float64), held in
   registers as [R, THREADS] tiles (row r: entries r*THREADS .. (r + 1)*THREADS - 1, one per thread). Entries
   past the row's end get key 0, below every real key (-inf's key is > 0), so they never count.
   The n-th largest key T is found two bits a step, most significant first: with T's higher
   bits fixed, three candidates T + d * 2**s (d = 1, 2, 3) are counted ("how many keys >=
   candidate"), and the largest d whose count still reaches n is kept. A row stops as soon as
   exactly n keys are >= T (distinct float32 keys: after about half the steps; ties at the n-th
   value: never early). The pixel and the channel searches run in lockstep in one loop: each
   thread sums its own keys' comparisons (no communication), and one block reduction of three
   int32 words (both rows' six counts, 16 bits each: counts <= 4096) serves both searches: at
   most KEY_BITS / 2 reductions (16 for float32, 8 for bfloat16).
2. Ranks. gt = key > T, eq = key == T; a block scan of (gt, eq) over each row's index gives
   each entry the number of gt and eq entries before it in index order. With G = the number of
   keys > T (known from the search, _next) and need = n - G (1 <= need <= the number of keys
   equal to T; all of them after an early stop), an entry is in iff gt, or eq with fewer than
   `need` eq entries before it (SPEC's tie rule: lower index first), and its place among the
   chosen is gt_before + min(eq_before, need). Channels: the place is the slot (ascending channel
   order); pixels: the place in the top-pixel list, which is therefore sorted by pixel index.
3. The seed rate from |S ∩ V| (step 4), in float64.
4. Seeds and blocks (steps 5-6). Lanes (plane j, top pixel s), PB x SB at a time: U is drawn only
   there. Each firing seed's run along w (the block's row at the seed's row) is a bit pattern
   over WPR words from word w0 = (start >> 5). Lanes of one plane are in pixel order, so runs
   with the same w0 are neighbours: a segmented OR scan along s (key w0) combines them and the
   last lane of each segment stores the combined run words, word t into scratch copy t: each
   word of a copy has one writer (no atomics). The copies are ORed into the first (one pass).
   Then every output word ORs, over the block's rows (dd, dh), the runs' words shifted by
   (dd*H + dh)*W bits (two words per row: a funnel shift). Seeds are valid centres, so no run
   or row leaves its plane; GUARD zero words around each plane absorb the shifted reads past
   the ends.
5. Counts (step 7): the sample's dropped count, and its scale for normalize="sample"/"none".
   The batch scale needs every sample's count: the forward's apply kernel computes it from the
   N counts (the same float64 formula, ``common.batch_scale``) and its first program stores it
   to ``scale``; ``build_state`` alone runs ``common.finish_kernel`` (one program) after this one.

Rows too long for registers (P or C > 4096, SINGLE off) stream from memory: each search step and
the rank pass loop over chunks of 4096 entries (the same arithmetic, keys re-read from L2).
Maps of any rank are 3-D here: (1, 1, L) and (1, H, W).

Loops marked ``# loop: NAME`` and branches marked ``# cold`` are read by tools/report.py (trip
counts and code left out of the instruction estimate).
"""
import triton
import triton.language as tl

from .common import i64, popcount32, udiv
from .flags import DIAMOND, ELIGIBLE, NORM_NONE, NORM_SAMPLE, NORMALIZE_MASK, NORMALIZE_SHIFT, P_FROM_PTR, \
    SEED_FROM_PTR
from .philox import seed_key, uniform



@triton.jit
def _valid(p, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w):
    """Is pixel p (flat index) a valid seed centre: lo <= (d, h, w) < hi on every axis?"""
    d = udiv(p, m_hw, s_hw)
    rem = p - d * HW
    h = udiv(rem, m_w, s_w)
    w = rem - h * W
    return (d >= lo_d) & (d < hi_d) & (h >= lo_h) & (h < hi_h) & (w >= lo_w) & (w < hi_w)


@triton.jit
def _kconst(v: tl.constexpr, KEY_BITS: tl.constexpr):
    """The constant v in the key type: int32 for 16-bit keys (values 0 .. 65535), else unsigned."""
    if KEY_BITS == 16:
        return tl.full((), v, tl.int32)
    elif KEY_BITS == 32:
        return tl.full((), v, tl.uint32)
    else:
        return tl.full((), v, tl.uint64)


@triton.jit
def _kcast(x, KEY_BITS: tl.constexpr):
    if KEY_BITS == 16:
        return x.to(tl.int32)
    elif KEY_BITS == 32:
        return x.to(tl.uint32)
    else:
        return x.to(tl.uint64)


@triton.jit
def _ukeys(row, q, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT: tl.constexpr,
           KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr):
    """Unsigned-order keys of entries q of a row (0 for q >= L). LAYOUT says where entry q sits
    (0: at q, 1: at q * stride, 2: q split into (d, h, w), at d*sd + h*sh + w*sw)."""
    ok = q < L
    if LAYOUT == 0:
        off = q
    elif LAYOUT == 1:
        off = q.to(tl.int64) * stride
    else:
        d = udiv(q, m_hw, s_hw)
        rem = q - d * HW
        h = udiv(rem, m_w, s_w)
        w = rem - h * W
        off = d.to(tl.int64) * sd + h.to(tl.int64) * sh + w.to(tl.int64) * sw
    v = tl.load(row + off, mask=ok, other=0)
    if KEY_BITS == 16:
        b = v.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extends
        MAG = 0x7FFF
    elif KEY_BITS == 32:
        b = v.to(tl.int32, bitcast=True)
        MAG = 0x7FFFFFFF
    else:
        b = v.to(tl.int64, bitcast=True)
        MAG = 0x7FFFFFFFFFFFFFFF
    # Negative floats: flip the magnitude bits, so that signed integer order is float order.
    key = tl.where(b >= 0, b, b ^ MAG)
    key = tl.where(key == -1, 0, key)  # -0.0 lands on -1: make it +0.0
    key = tl.where((b & MAG) > EXP, NEG_INF, key)  # NaN ranks as -inf (tested on the bits)
    # The sign bit flipped: unsigned order. -inf's key is then > 0, so 0 marks "no entry".
    if KEY_BITS == 16:
        u = key + 32768
    elif KEY_BITS == 32:
        u = (key ^ -2147483648).to(tl.uint32, bitcast=True)
    else:
        u = (key ^ -9223372036854775808).to(tl.uint64, bitcast=True)
    return tl.where(ok, u, u * 0)  # (u * 0: the same type and shape; a 0-d uint64 0 broadcast into a
    # 2-D where is not kept by the interpreter)


@triton.jit
def _tile(base, R: tl.constexpr, THREADS: tl.constexpr):
    """Flat indices of a [R, THREADS] tile from ``base``: row r holds base + r*THREADS + t. The
    addresses run along the threads, so Triton gives each thread one column (all R rows in its
    registers: the sums over axis 0 below are in-thread). (Had they run along a thread's rows,
    Triton would spread each column over 16 lanes to coalesce the loads.)"""
    return base + tl.arange(0, R)[:, None] * THREADS + tl.arange(0, THREADS)[None, :]


@triton.jit
def _ge3(keys, T, S, KEY_BITS: tl.constexpr):
    """Per-thread counts of keys >= T + d * 2**S for d = 1, 2, 3 ([THREADS] int32 each)."""
    # (Shifted in the key type: S is a run-time int32, and 1 << 62 would overflow an int32.)
    c1 = tl.sum((keys >= T + (_kconst(1, KEY_BITS) << S)).to(tl.int32), axis=0)
    c2 = tl.sum((keys >= T + (_kconst(2, KEY_BITS) << S)).to(tl.int32), axis=0)
    c3 = tl.sum((keys >= T + (_kconst(3, KEY_BITS) << S)).to(tl.int32), axis=0)
    return c1, c2, c3


@triton.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _next(T, G, CT, c1, c2, c3, n, S, KEY_BITS: tl.constexpr):
    """(T, G, CT) after one step: T with bits S, S+1 set to the largest d whose candidate count
    still reaches n (the counts fall as d rises, so d is the number of candidates that reach n);
    CT, the count of keys >= T; G, the count of keys >= the lowest candidate that failed so far
    (T + (d + 1) * 2**S when d < 3, else the previous one, which is T + 4 * 2**S). After the last
    step (S = 0) that candidate is T + 1: G is the number of keys > T, no reduction needed for it.
    When CT reaches n exactly the search may stop: the keys >= T are the top n."""
    d = (c1 >= n).to(tl.int32) + (c2 >= n).to(tl.int32) + (c3 >= n).to(tl.int32)
    G = tl.where(d == 0, c1, tl.where(d == 1, c2, tl.where(d == 2, c3, G)))
    CT = tl.where(d == 1, c1, tl.where(d == 2, c2, tl.where(d == 3, c3, CT)))
    return T + (_kcast(d, KEY_BITS) << S), G, CT


@triton.jit
def _seg_or(v1, k1, v2, k2):
    """Segmented OR along lanes sorted by key: the OR of the lanes of the last segment so far
    (associative because keys never decrease along the scan)."""
    return tl.where(k1 == k2, v1 | v2, v2), k2


@triton.jit
def _run_pair(b, width, t: tl.constexpr):
    """Words t and t + 1 (low, high halves of an int64) of a run of ``width`` bits starting at bit
    b (0 <= b < 32) of word 0: word u holds bits [max(b - 32u, 0), min(b + width - 32u, 32))."""
    lo0 = tl.maximum(b - 32 * t, 0)
    hi0 = tl.minimum(b + width - 32 * t, 32)
    n0 = tl.maximum(hi0 - lo0, 0).to(tl.int64)
    lo1 = tl.maximum(b - 32 * (t + 1), 0)
    hi1 = tl.minimum(b + width - 32 * (t + 1), 32)
    n1 = tl.maximum(hi1 - lo1, 0).to(tl.int64)
    one = tl.full((), 1, tl.int64)
    w0 = ((one << n0) - 1) << lo0.to(tl.int64)
    w1 = ((one << n1) - 1) << lo1.to(tl.int64)
    return w0 | (w1 << 32)


@triton.jit
def _emit(q, sel, place, L, slot_row, out_list, CHANNELS: tl.constexpr):
    """Store the ranks of one tile: channels get their slot (or -1) and the channel list its
    channel; pixels go to the top-pixel list at their place."""
    if CHANNELS:
        tl.store(slot_row + q, tl.where(sel, place, -1), mask=q < L)
    tl.store(out_list + place, q, mask=sel)


@triton.jit
def _rank_row(row, L, need, T, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, slot_row, out_list,
              LAYOUT: tl.constexpr, KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr,
              CHANNELS: tl.constexpr, BLOCK: tl.constexpr):
    """Step 2 of the module docstring for a row of at most BLOCK (<= 4096) entries: entry q is in iff
    gt, or eq with fewer than ``need`` eq entries before it; its place is gt_before + min(eq_before,
    need)."""
    q = tl.arange(0, BLOCK)
    k = _ukeys(row, q, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT, KEY_BITS, EXP, NEG_INF)
    x = (k > T).to(tl.int32) | ((k == T).to(tl.int32) << 16)
    before = tl.cumsum(x, axis=0) - x
    sel = (((x & 1) != 0) | ((x > 1) & ((before >> 16) < need))) & (q < L)  # (T = 0 when n = L: not the padding)
    _emit(q, sel, (before & 0xFFFF) + tl.minimum(before >> 16, need), L, slot_row, out_list, CHANNELS)


@triton.jit
def _rank_stream(row, L, n, T, G, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, slot_row, out_list,
                 LAYOUT: tl.constexpr, KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr,
                 CHANNELS: tl.constexpr, THREADS: tl.constexpr):
    """Step 2 of the module docstring for a row streamed in chunks of 16 * THREADS entries (gt, eq
    counts in 32-bit fields of an int64; G, the number of keys > T, from the search)."""
    CH: tl.constexpr = 16 * THREADS
    need = n - G
    carry = tl.full((), 0, tl.int64)
    for c0 in range(0, L, CH):  # loop: rank_chunks
        q = c0 + tl.arange(0, CH)  # (1-D: the scan follows the index order whatever the layout)
        k = _ukeys(row, q, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT, KEY_BITS, EXP, NEG_INF)
        gt = k > T
        eq = k == T
        x = gt.to(tl.int64) | (eq.to(tl.int64) << 32)
        before = carry + tl.cumsum(x, axis=0) - x
        gt_b = before & 0xFFFFFFFF
        eq_b = before >> 32
        sel = (gt | (eq & (eq_b < need))) & (q < L)
        _emit(q, sel, (gt_b + tl.minimum(eq_b, need)).to(tl.int32), L, slot_row, out_list, CHANNELS)
        carry += tl.sum(x, axis=0)


@triton.jit
def _select_stream(row, L, n, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT: tl.constexpr,
                   KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr, THREADS: tl.constexpr):
    """The n-th largest key of a row streamed in chunks (two bits a step, as in the module
    docstring; the three counts reduced unpacked: they may exceed 16 bits)."""
    CH: tl.constexpr = 16 * THREADS
    T = _kconst(0, KEY_BITS)
    G = tl.full((), 0, tl.int32)
    CT = tl.full((), 0, tl.int32) + L
    for step in tl.static_range(KEY_BITS // 2):
        S = KEY_BITS - 2 * (step + 1)
        a1 = tl.zeros([THREADS], tl.int32)
        a2 = tl.zeros([THREADS], tl.int32)
        a3 = tl.zeros([THREADS], tl.int32)
        for c0 in range(0, L, CH):  # loop: select_chunks
            k = _ukeys(row, _tile(c0, 16, THREADS), L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT,
                       KEY_BITS, EXP, NEG_INF)
            c1, c2, c3 = _ge3(k, T, S, KEY_BITS)
            a1 += c1
            a2 += c2
            a3 += c3
        r1, r2, r3 = tl.reduce((a1, a2, a3), 0, _add3)
        T, G, CT = _next(T, G, CT, r1, r2, r3, n, S, KEY_BITS)
    return T, G


# Integers are not specialised (1 as a constant, multiples of 16): one compiled kernel serves
# many shapes; what the code depends on is in the constexprs.
_INTS = ["seed_lo", "seed_hi", "p_lo", "p_hi", "gs_bits", "C", "P", "H", "W", "HW", "n_pix", "n_chan", "words",
         "ws_stride", "numel_sample", "scn", "scd", "sch", "scw", "san", "sac", "m_w", "s_w", "m_hw", "s_hw", "lo_d",
         "hi_d", "lo_h", "hi_h", "lo_w", "hi_w", "num_factor", "den_factor", "up_d", "down_d", "up_h", "down_h",
         "up_w", "rw", "rho", "flags", "hs_stride", "m_words", "s_words"]
POINTERS = ["cam_ptr", "alpha_ptr", "seed_ptr", "p_ptr", "slots_ptr", "bits_ptr", "scale_ptr", "dropped_ptr",
            "rate_ptr", "ws_ptr"]


@triton.jit(do_not_specialize=_INTS, do_not_specialize_on_alignment=POINTERS)
def state_kernel(
    cam_ptr, alpha_ptr, seed_ptr, p_ptr, slots_ptr, bits_ptr, scale_ptr, dropped_ptr, rate_ptr, ws_ptr,
    seed_lo, seed_hi, p_lo, p_hi,
    gs_bits, C, P, H, W, HW, n_pix, n_chan, words, ws_stride, numel_sample,
    scn, scd, sch, scw, san, sac, m_w, s_w, m_hw, s_hw,
    lo_d, hi_d, lo_h, hi_h, lo_w, hi_w, num_factor, den_factor,
    up_d, down_d, up_h, down_h, up_w, rw, rho, flags, hs_stride, m_words, s_words,
    P_BITS: tl.constexpr, P_EXP: tl.constexpr, P_NEG_INF: tl.constexpr, CAM_LAYOUT: tl.constexpr, RP: tl.constexpr,
    A_BITS: tl.constexpr, A_EXP: tl.constexpr, A_NEG_INF: tl.constexpr, A_LAYOUT: tl.constexpr, RA: tl.constexpr,
    SINGLE: tl.constexpr, SB: tl.constexpr, PB: tl.constexpr, WPR: tl.constexpr, GUARD: tl.constexpr,
    ZB: tl.constexpr, THREADS: tl.constexpr,
):
    i = tl.program_id(0)
    i64_ = i.to(tl.int64)
    # This sample's scratch row: [top-pixel list (n_pix), top-channel list (n_chan), NH * WPR run
    # copies of its n_chan planes, each plane padded by GUARD zero words on both sides].
    pix_list = ws_ptr + i64_ * ws_stride
    chan_list = pix_list + n_pix
    copies = chan_list + n_chan
    copy_words = n_chan * hs_stride
    diamond = (flags & DIAMOND) != 0
    nh = tl.where(diamond, rho + 1, 1)  # run widths: one for boxes, rho + 1 for diamonds
    arow = alpha_ptr + i64_ * san
    crow = cam_ptr + i64_ * scn
    slot_row = slots_ptr + i64_ * C

    # Zero the run copies first: the stores drain while the selection runs.
    zero_words = nh * WPR * copy_words
    for z0 in range(0, zero_words, ZB):  # loop: zero
        z = z0 + tl.arange(0, ZB)
        tl.store(copies + z, tl.zeros([ZB], tl.int32), mask=z < zero_words)

    if SINGLE:
        # Steps 1-2: both rows in registers, searched in lockstep (module docstring, 1-2).
        qp = _tile(0, RP, THREADS)
        kp = _ukeys(crow, qp, P, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, CAM_LAYOUT, P_BITS, P_EXP,
                    P_NEG_INF)
        qa = _tile(0, RA, THREADS)
        ka = _ukeys(arow, qa, C, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT, A_BITS, A_EXP, A_NEG_INF)
        Tp = _kconst(0, P_BITS)
        Ta = _kconst(0, A_BITS)
        Gp = tl.full((), 0, tl.int32)
        Ga = tl.full((), 0, tl.int32)
        CTp = tl.full((), 0, tl.int32) + P  # keys >= T (T = 0: every entry of the row)
        CTa = tl.full((), 0, tl.int32) + C
        # Step s looks at bits SP, SP + 1 of the pixel keys and SA, SA + 1 of the channel keys (a
        # row whose bits are used up, or whose keys >= T are exactly its top n, is done: early exit).
        SP = P_BITS - 2
        SA = A_BITS - 2
        more_p = CTp != n_pix
        more_a = CTa != n_chan
        while more_p | more_a:  # loop: search
            zero = tl.zeros([THREADS], tl.int32)
            p1, p2, p3 = zero, zero, zero
            a1, a2, a3 = zero, zero, zero
            if more_p:
                p1, p2, p3 = _ge3(kp, Tp, SP, P_BITS)
            if more_a:
                a1, a2, a3 = _ge3(ka, Ta, SA, A_BITS)
            # Six counts of at most 4096 in three words, 16 bits each: one block reduction.
            rx, ry, rz = tl.reduce((p1 | (p2 << 16), p3 | (a1 << 16), a2 | (a3 << 16)), 0, _add3)
            if more_p:
                Tp, Gp, CTp = _next(Tp, Gp, CTp, rx & 0xFFFF, rx >> 16, ry & 0xFFFF, n_pix, SP, P_BITS)
            if more_a:
                Ta, Ga, CTa = _next(Ta, Ga, CTa, ry >> 16, rz & 0xFFFF, rz >> 16, n_chan, SA, A_BITS)
            SP -= 2
            SA -= 2
            more_p = (SP >= 0) & (CTp != n_pix)
            more_a = (SA >= 0) & (CTa != n_chan)
        # need: how many keys equal to T are in (the lowest indices first); a search that stopped
        # early takes them all (CT == n: at most n of them).
        need_p = tl.where(CTp == n_pix, n_pix, n_pix - Gp)
        need_a = tl.where(CTa == n_chan, n_chan, n_chan - Ga)
        # Ranks: a 1-D scan of each row over its index (the tie rule's order) of (gt, eq) in 16-bit
        # fields of an int32 (counts <= 4096). The keys are read again (cache hits) in a 1-D
        # layout: a scan along the threads' own columns of the [R, THREADS] tiles would make Triton 3.6
        # lay them out across lanes, and every per-thread sum of the search above would become
        # shuffles. (Two scans rather than one over both rows: half the registers.)
        _rank_row(arow, C, need_a, Ta, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, slot_row, chan_list, A_LAYOUT, A_BITS, A_EXP,
                  A_NEG_INF, True, RA * THREADS)
        _rank_row(crow, P, need_p, Tp, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, slot_row, pix_list, CAM_LAYOUT,
                  P_BITS, P_EXP, P_NEG_INF, False, RP * THREADS)
    else:
        Ta, Ga = _select_stream(arow, C, n_chan, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT, A_BITS, A_EXP,
                                A_NEG_INF, THREADS)
        Tp, Gp = _select_stream(crow, P, n_pix, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, CAM_LAYOUT,
                                P_BITS, P_EXP, P_NEG_INF, THREADS)
        _rank_stream(arow, C, n_chan, Ta, Ga, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, slot_row, chan_list,
                     A_LAYOUT, A_BITS, A_EXP, A_NEG_INF, True, THREADS)
        _rank_stream(crow, P, n_pix, Tp, Gp, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, slot_row,
                     pix_list, CAM_LAYOUT, P_BITS, P_EXP, P_NEG_INF, False, THREADS)
    tl.debug_barrier()  # the lists and the zeroed copies are visible to every thread

    # Step 3: |S ∩ V|, the top pixels that are valid centres.
    s = tl.arange(0, SB)
    ps = tl.load(pix_list + s, mask=s < n_pix, other=0)
    kept = tl.sum(((s < n_pix) & _valid(ps, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w,
                                        hi_w)).to(tl.int32), axis=0)
    for s0 in range(SB, n_pix, SB):  # loop: valid
        s = s0 + tl.arange(0, SB)
        ps = tl.load(pix_list + s, mask=s < n_pix, other=0)
        ok = (s < n_pix) & _valid(ps, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w)
        kept += tl.sum(ok.to(tl.int32), axis=0)

    # Step 4 in float64, left to right: drop_prob * gamma_scale * F / (A * n' * |S ∩ V|) ("eligible",
    # F = C*P) or / (A * |V|) ("dropblock", F = P); clamped to [0, 1] (NaN to 0), then float32.
    prob = ((i64(p_hi) << 32) | (i64(p_lo) & 0xFFFFFFFF)).to(tl.float64, bitcast=True)
    if (flags & P_FROM_PTR) != 0:  # the rate in device memory (CUDA graphs, torch.compile)
        prob = tl.load(p_ptr)
    gs = (tl.full((), 0, tl.int64) + gs_bits).to(tl.float64, bitcast=True)
    num = prob * gs * i64(num_factor).to(tl.float64)
    den = tl.where((flags & ELIGIBLE) != 0, kept.to(tl.int64) * i64(den_factor), i64(den_factor)).to(tl.float64)
    gam = num / tl.maximum(den, 1.0)  # den is 0 only when nothing is eligible: the rate is 0 then
    gam = tl.where((den > 0.0) & (gam > 0.0), tl.minimum(gam, 1.0), 0.0)
    gamma = gam.to(tl.float32)
    tl.store(rate_ptr + i, gamma)

    # Steps 5-6 (module docstring, 4): runs of the firing seeds into the copies.
    k0, k1 = seed_key(seed_ptr, seed_lo, seed_hi, flags & SEED_FROM_PTR)
    for j0 in range(0, n_chan, PB):  # loop: planes
        j = j0 + tl.arange(0, PB)
        j_ok = j < n_chan
        c_j = tl.load(chan_list + j, mask=j_ok, other=0)
        o_plane = (i64_ * C + c_j.to(tl.int64)) * P  # logical index o of (i, c_j, pixel 0)
        w_plane = copies + GUARD + j * hs_stride  # word 0 of plane j in copy 0
        for s0 in range(0, n_pix, SB):  # loop: seeds
            s = s0 + tl.arange(0, SB)
            s_in = s < n_pix
            ps = tl.load(pix_list + s, mask=s_in, other=0)
            s_ok = s_in & _valid(ps, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w)
            # The last lane of a segment: the next lane is in another word, or past this chunk.
            last = (s + 1 >= n_pix) | (s + 1 >= s0 + SB)
            pn = tl.load(pix_list + s + 1, mask=~last, other=0)
            u = uniform(k0, k1, o_plane[:, None] + ps[None, :])
            fire = j_ok[:, None] & s_ok[None, :] & (u < gamma)
            for k in range(0, nh):  # loop: runs
                off = tl.where(diamond, k, up_w)  # the run starts `off` pixels before the seed
                width = tl.where(diamond, 2 * k + 1, rw)
                start = ps - off  # flat in the plane; >= 0 for a valid seed (never negative-shifted)
                w0 = start >> 5
                # Lanes past the list (s >= n_pix: the block is a power of two) never store, and
                # their key is the largest, so the keys stay non-decreasing along the lanes: the
                # segmented OR is associative only then, and a GPU scans in a tree, not in order.
                end = (last | (((pn - off) >> 5) != w0))[None, :] & j_ok[:, None] & s_in[None, :]
                key = tl.where(s_in, w0, 2147483647)[None, :] + tl.zeros([PB, SB], tl.int32)
                for t in tl.static_range(0, WPR, 2):
                    pat = tl.where(fire, _run_pair(start & 31, width, t)[None, :], 0)
                    v, _k = tl.associative_scan((pat, key), 1, _seg_or)
                    lo = (v & 0xFFFFFFFF).to(tl.int32)
                    hi = (v >> 32).to(tl.int32)
                    dst = w_plane[:, None] + (k * WPR + t) * copy_words + w0[None, :] + t  # word w0 + t of copy t
                    if s0 != 0:  # cold: a segment may continue one of the previous chunk: OR into it
                        lo |= tl.load(dst, mask=end & (lo != 0), other=0)
                        hi |= tl.load(dst + copy_words + 1, mask=end & (hi != 0), other=0)
                    tl.store(dst, lo, mask=end & (lo != 0))
                    if t + 1 < WPR:
                        tl.store(dst + copy_words + 1, hi, mask=end & (hi != 0))
            if n_pix > SB:  # cold: the next chunk may OR into words this one stored
                tl.debug_barrier()
    tl.debug_barrier()  # every run is in
    if WPR > 1:
        # Merge each run width's WPR copies into its first (each word read and written by one
        # thread): the dilation below then reads one copy per block row.
        for k in range(0, nh):  # loop: merge_copies
            base = copies + k * WPR * copy_words
            for z0 in range(0, copy_words, ZB):  # loop: merge
                z = z0 + tl.arange(0, ZB)
                z_ok = z < copy_words
                acc = tl.load(base + z, mask=z_ok, other=0)
                for t in tl.static_range(1, WPR):
                    acc |= tl.load(base + t * copy_words + z, mask=z_ok, other=0)
                tl.store(base + z, acc, mask=z_ok)
        tl.debug_barrier()  # the merged runs are visible

    # Dilation along the other axes: block row (dd, dh) is the runs moved by (dd*H + dh)*W bits.
    region = n_chan * words
    plane0 = bits_ptr + i64_ * n_chan * words
    ones = tl.zeros([ZB], tl.int32)
    for z0 in range(0, region, ZB):  # loop: dilate
        z = z0 + tl.arange(0, ZB)
        z_ok = z < region
        jr = udiv(z, m_words, s_words)  # plane and word of each lane
        w = z - jr * words
        src = copies + GUARD + jr * hs_stride + w
        dil = tl.zeros([ZB], tl.int32)
        for dd in range(-up_d, down_d + 1):  # loop: rows_d
            for dh in range(-up_h, down_h + 1):  # loop: rows_h
                kk = tl.where(diamond, rho - tl.abs(dd) - tl.abs(dh), 0)  # the row's run width: copy kk
                if kk >= 0:  # (a diamond's outer rows are absent)
                    shift = (dd * H + dh) * W
                    q = shift >> 5
                    r = shift & 31
                    row = src + kk * WPR * copy_words - q  # (the merged copy of run width kk)
                    upper = tl.load(row, mask=z_ok, other=0)
                    lower = tl.load(row - 1, mask=z_ok, other=0)
                    pair = (upper.to(tl.int64) << 32) | (lower.to(tl.int64) & 0xFFFFFFFF)
                    # bit x of the row is bit x - shift of the runs: (upper << r) | (lower >> (32 - r)).
                    dil |= (pair >> (32 - r)).to(tl.int32)  # (the low 32 bits: the truncation)
        tl.store(plane0 + z, dil, mask=z_ok)
        ones += popcount32(dil)

    # Step 7: the sample's count, and its scale unless it is the batch's.
    count = tl.sum(ones.to(tl.int64), axis=0)
    tl.store(dropped_ptr + i, count)
    normalize = (flags >> NORMALIZE_SHIFT) & NORMALIZE_MASK
    if normalize == NORM_SAMPLE:
        kept_ = i64(numel_sample) - count
        sc = tl.where(kept_ == 0, 0.0, i64(numel_sample).to(tl.float64) / tl.maximum(kept_, 1).to(tl.float64))
        tl.store(scale_ptr + i, sc.to(scale_ptr.dtype.element_ty))
    elif normalize == NORM_NONE:
        tl.store(scale_ptr + i, tl.full((), 1.0, scale_ptr.dtype.element_ty))
