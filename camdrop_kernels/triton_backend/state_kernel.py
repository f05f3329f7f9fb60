"""SPEC.md steps 1-7 in one kernel: selection, seed rate, seeds, blocks, counts and scales.

Grid: G programs per sample (``pid = i * G + g``). Every program of sample i ranks cam[i]
and alpha[i] itself: when both rows fit in registers (4096 entries), in lockstep, by a radix
select (a 256-bin histogram per key byte, the two rows' counts packed in one int32, stopping
early once the n-th key's byte bin is taken whole), and only when the n-th key is tied with
entries left out, a second radix select on the tied entries' indices (no scan). It lists the
top channels (ascending: their slots) and the top pixels (any order, places from an atomic
counter) in its scratch row, and then builds the bit planes of its share of the top channels:
U is drawn only at (plane, eligible pixel) lanes, each firing seed ORs its run along w into a
scratch copy of the plane (one relaxed atomic per seed and word), and the other axes are
dilated in registers by shifted word loads; the planes are written whole and counted.

The scale needs every count (``normalize="batch"``) or every program of a sample (G > 1):
each program then publishes its count and takes a ticket from a completion counter (one
acq_rel atomic per program); the program that draws the last ticket sums the counts, writes
``dropped`` and ``scale`` for the whole batch and resets the counter to 0 for the next launch,
so the counter needs no zeroing launch. With G == 1 and "sample"/"none" every program
finishes its own sample. Maps of any rank are 3-D here: (1, 1, L) and (1, H, W).

Loops marked ``# loop: NAME`` and branches marked ``# cold`` are read by report.py (trip
counts and code left out of the instruction estimate).
"""
import triton
import triton.language as tl

from .philox import seed_key, uniform


def _version(text: str) -> tuple:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2])


# Triton 3.8 builds tl.histogram from warp-aggregated shared-memory atomics; 3.6 from warp votes,
# about 60 instructions per entry for 256 bins. There the histograms count with relaxed global
# atomics into the program's scratch instead (a few instructions per entry, an L2 round trip).
HIST_GLOBAL = tl.constexpr(_version(triton.__version__) < (3, 8))
HIST_WORDS = tl.constexpr(256)  # scratch words of a program's bins


@triton.jit
def _hist_begin(hist_ptr):
    """Zero the program's 256 bins (global-histogram mode)."""
    tl.debug_barrier()  # the previous pass has read them
    tl.store(hist_ptr + tl.arange(0, 256), tl.zeros([256], tl.int32))
    tl.debug_barrier()


@triton.jit
def _hist_add(hist_ptr, digit, mask, inc):
    """Add ``inc`` to bin ``digit`` of every entry in ``mask`` (relaxed atomics, no return)."""
    tl.atomic_add(hist_ptr + digit, tl.zeros_like(digit) + inc, mask=mask, sem="relaxed")


@triton.jit
def _hist_end(hist_ptr):
    """The 256 counts, once every program thread's additions are in."""
    tl.debug_barrier()
    return tl.load(hist_ptr + tl.arange(0, 256), cache_modifier=".cg")


@triton.jit
def _i64(x):
    """x as an int64 scalar (an int argument may arrive as int32, or as the constexpr 1)."""
    return tl.full((), 0, tl.int64) + x


@triton.jit
def _udiv(x, m, s):
    """x // d for int32 0 <= x < 2**31, with the host's magic (m, s) of d (``magic(d)``)."""
    return ((x.to(tl.int64) * m) >> s).to(tl.int32)


@triton.jit
def _valid(p, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w):
    """Is pixel p (flat index) a valid seed centre: lo <= (d, h, w) < hi on every axis?"""
    d = _udiv(p, m_hw, s_hw)
    rem = p - d * HW
    h = _udiv(rem, m_w, s_w)
    w = rem - h * W
    return (d >= lo_d) & (d < hi_d) & (h >= lo_h) & (h < hi_h) & (w >= lo_w) & (w < hi_w)


@triton.jit
def _keys(row, idx, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT: tl.constexpr,
          KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr):
    """Order-preserving integer keys of entries ``idx`` of a row (NaN as -inf, -0.0 as +0.0),
    and their in-range mask; LAYOUT says where entry q sits (0: at q, 1: at q * stride, 2: q split
    into (d, h, w), at d*sd + h*sh + w*sw)."""
    ok = idx < L
    if LAYOUT == 0:  # contiguous: entry q at q
        off = idx
    elif LAYOUT == 1:  # row-major with a stride: entry q at q * stride
        off = idx.to(tl.int64) * stride
    else:  # any strides: q split into (d, h, w)
        d = _udiv(idx, m_hw, s_hw)
        rem = idx - d * HW
        h = _udiv(rem, m_w, s_w)
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
    # Negative floats: flip the magnitude bits so that signed integer order is float order.
    key = tl.where(b >= 0, b, b ^ MAG)
    key = tl.where(key == -1, 0, key)  # -0.0 lands on -1: make it +0.0
    key = tl.where((b & MAG) > EXP, NEG_INF, key)  # NaN ranks as -inf
    return key, ok


@triton.jit
def _radix_input(row, idx, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, T_in, LAYOUT: tl.constexpr,
                 KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr, BY_INDEX: tl.constexpr,
                 RBITS: tl.constexpr):
    """(radix key, taking part) of entries ``idx``: the float key in unsigned order, or with
    BY_INDEX the reversed index (largest first = lowest index first) of the entries equal to T_in."""
    key, ok = _keys(row, idx, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT, KEY_BITS, EXP, NEG_INF)
    if BY_INDEX:  # 2**RBITS - 1 - idx as an RBITS-bit pattern (for 32 bits: ~idx)
        if RBITS == 16:
            return 65535 - idx, ok & (key == T_in)
        else:
            return -1 - idx, ok & (key == T_in)
    elif KEY_BITS == 16:
        return key + 32768, ok  # [-32768, 32767] -> [0, 65535]
    elif KEY_BITS == 32:
        return key ^ -2147483648, ok  # the sign bit flipped: unsigned order of the pattern
    else:
        return key ^ -9223372036854775808, ok


@triton.jit
def _above(r, SHIFT, prefix):
    """The mask of the bits above byte SHIFT .. SHIFT + 7 (none in the first pass, r == 0), in
    prefix's type: an entry still competes when its bits there equal the prefix's."""
    ones = prefix * 0 - 1
    return tl.where(r == 0, prefix * 0, ones << tl.minimum(SHIFT + 8, 8 * 8 - 1))


@triton.jit
def _radix_select(hist_ptr, row, L, n, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, T_in, LAYOUT: tl.constexpr,
                  KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr, BY_INDEX: tl.constexpr,
                  RBITS: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    """(prefix, need, ties) for the n-th largest radix key R of a row's taking-part entries.

    Most significant byte first: a 256-bin histogram of the next byte among the entries that
    match the prefix so far; the byte is the highest bin where the count at or above it reaches
    ``need``, and ``need`` drops by the count strictly above it. When the bin holds exactly
    ``need`` entries they are all in: the search stops early with the remaining bytes 0, and
    "radix key >= prefix" selects exactly n. Otherwise prefix = R after the last byte, and
    ``ties`` entries equal R, of which the first ``need`` are in. SINGLE: the row fits one
    BLOCK and stays in registers across the passes."""
    bins = tl.arange(0, 256)
    need = tl.full((), 0, tl.int32) + n
    ties = tl.full((), 0, tl.int32) + n
    done = tl.full((), 0, tl.int32)
    if RBITS == 64:
        prefix = tl.full((), 0, tl.int64)
    else:
        prefix = tl.full((), 0, tl.int32)
    if SINGLE:
        ukey0, part0 = _radix_input(row, tl.arange(0, BLOCK), L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw,
                                    T_in, LAYOUT, KEY_BITS, EXP, NEG_INF, BY_INDEX, RBITS)
    for r in range(0, RBITS // 8):  # loop: radix_passes
        SHIFT = RBITS - 8 * (r + 1)  # this pass's byte: bits SHIFT .. SHIFT + 7
        if done == 0:
            high = _above(r, SHIFT, prefix)
            if HIST_GLOBAL:
                _hist_begin(hist_ptr)
            if SINGLE:
                digit = ((ukey0 >> SHIFT) & 255).to(tl.int32)
                if HIST_GLOBAL:
                    _hist_add(hist_ptr, digit, part0 & ((ukey0 & high) == prefix), 1)
                    hist = _hist_end(hist_ptr)
                else:
                    hist = tl.histogram(digit, 256, mask=part0 & ((ukey0 & high) == prefix))
            else:
                hist = tl.zeros([256], tl.int32)
                for start in range(0, L, BLOCK):  # loop: radix_chunks
                    ukey, part = _radix_input(row, start + tl.arange(0, BLOCK), L, stride, sd, sh, sw, W, HW, m_w,
                                              s_w, m_hw, s_hw, T_in, LAYOUT, KEY_BITS, EXP, NEG_INF, BY_INDEX, RBITS)
                    digit = ((ukey >> SHIFT) & 255).to(tl.int32)
                    if HIST_GLOBAL:
                        _hist_add(hist_ptr, digit, part & ((ukey & high) == prefix), 1)
                    else:
                        hist += tl.histogram(digit, 256, mask=part & ((ukey & high) == prefix))
                if HIST_GLOBAL:
                    hist = _hist_end(hist_ptr)
            at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # this byte or a higher one
            byte = tl.max(tl.where(at_or_above >= need, bins, 0), axis=0)
            in_bin = tl.where(bins == byte, hist, 0)
            need -= tl.sum(tl.where(bins == byte, at_or_above, 0) - in_bin, axis=0)
            ties = tl.sum(in_bin, axis=0)
            prefix = prefix | (byte.to(prefix.dtype) << SHIFT)
            done = (ties == need).to(tl.int32)
    return prefix, need, ties


@triton.jit
def _select(hist_ptr, row, L, n, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT: tl.constexpr,
            KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr, IDX_BITS: tl.constexpr,
            BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    """(T, last): entry q of the row is in its top n iff key > T, or key == T and q <= last
    (ties go lowest index first; 1 <= n <= L). No scan: a radix select on the keys, and only when
    the n-th key is tied with entries left out, a second one on the tied entries' indices."""
    R, need, ties = _radix_select(hist_ptr, row, L, n, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, 0, LAYOUT,
                                  KEY_BITS,
                                  EXP, NEG_INF, False, KEY_BITS, BLOCK, SINGLE)
    return _threshold(hist_ptr, R, need, ties, row, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT,
                      KEY_BITS, EXP,
                      NEG_INF, IDX_BITS, BLOCK, SINGLE, KEY_BITS)


@triton.jit
def _threshold(hist_ptr, R, need, ties, row, L, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, LAYOUT: tl.constexpr,
               KEY_BITS: tl.constexpr, EXP: tl.constexpr, NEG_INF: tl.constexpr, IDX_BITS: tl.constexpr,
               BLOCK: tl.constexpr, SINGLE: tl.constexpr, RBITS: tl.constexpr):
    """(T, last) of _select from a radix select's (prefix R, need, ties) over RBITS-bit keys."""
    last = tl.full((), -1, tl.int32)
    if need < ties:  # cold: ties at the n-th key are rare
        # The n-th key R is tied with entries left out: the first `need` of them (by index) are in.
        T = _signed(R, RBITS)
        I, _n, _t = _radix_select(hist_ptr, row, L, need, stride, sd, sh, sw, W, HW, m_w, s_w, m_hw, s_hw, T, LAYOUT,
                                  KEY_BITS, EXP, NEG_INF, True, IDX_BITS, BLOCK, SINGLE)
        if IDX_BITS == 16:
            last = 65535 - I
        else:
            last = -1 - I
    elif R == 0:  # everything is in
        T = _signed(R, RBITS)
        last = last + L
    else:  # exactly the radix keys >= R are in: key > signed(R - 1), no ties
        T = _signed(R - 1, RBITS)
    return T, last


@triton.jit
def _radix_pair(hist_ptr, uA, pA, nA, uB, pB, nB, RBITS: tl.constexpr):
    """_radix_select of two in-register rows of at most 4096 entries in lockstep (A: the channels,
    B: the pixels). Counts stay below 2**13, so both rows' histograms travel packed in one int32
    (B in the high half): one scan and two reductions per pass serve both rows."""
    bins = tl.arange(0, 256)
    needA = tl.full((), 0, tl.int32) + nA
    needB = tl.full((), 0, tl.int32) + nB
    tiesA = needA
    tiesB = needB
    doneA = tl.full((), 0, tl.int32)
    doneB = tl.full((), 0, tl.int32)
    if RBITS == 64:
        prefixA = tl.full((), 0, tl.int64)
        prefixB = tl.full((), 0, tl.int64)
    else:
        prefixA = tl.full((), 0, tl.int32)
        prefixB = tl.full((), 0, tl.int32)
    for r in tl.static_range(RBITS // 8):  # (unrolled: the hot path; constant shifts)
        SHIFT = RBITS - 8 * (r + 1)
        if (doneA == 0) | (doneB == 0):
            if r == 0:
                mA = pA
                mB = pB
            else:
                mA = pA & ((uA >> (SHIFT + 8)) == (prefixA >> (SHIFT + 8)))
                mB = pB & ((uB >> (SHIFT + 8)) == (prefixB >> (SHIFT + 8)))
            dA = ((uA >> SHIFT) & 255).to(tl.int32)
            dB = ((uB >> SHIFT) & 255).to(tl.int32)
            if HIST_GLOBAL:
                _hist_begin(hist_ptr)
                _hist_add(hist_ptr, dA, mA, 1)
                _hist_add(hist_ptr, dB, mB, 65536)
                hist = _hist_end(hist_ptr)
            else:
                hist = tl.histogram(dA, 256, mask=mA) + (tl.histogram(dB, 256, mask=mB) << 16)
            at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # no borrows: each half >= 0
            geA = (at_or_above & 0xFFFF) >= needA
            geB = (at_or_above >> 16) >= needB
            # at_or_above falls as the byte rises: the byte is the number of bins reaching `need`, less 1.
            nge = tl.sum(geA.to(tl.int32) + (geB.to(tl.int32) << 16), axis=0)
            bA = (nge & 0xFFFF) - 1
            bB = (nge >> 16) - 1
            # (above, in the bin) of both rows in one int64: A's above, A's bin, B's above, B's bin.
            h64 = hist.to(tl.int64)
            a64 = at_or_above.to(tl.int64)
            pick = (tl.where(bins == bA, ((a64 - h64) & 0xFFFF) | ((h64 & 0xFFFF) << 16), 0)
                    | tl.where(bins == bB, (((a64 - h64) >> 16) << 32) | ((h64 >> 16) << 48), 0))
            both = tl.sum(pick, axis=0)
            # A row already done keeps its values (its search stopped early).
            keepA = doneA != 0
            keepB = doneB != 0
            needA = tl.where(keepA, needA, needA - (both & 0xFFFF).to(tl.int32))
            needB = tl.where(keepB, needB, needB - ((both >> 32) & 0xFFFF).to(tl.int32))
            tiesA = tl.where(keepA, tiesA, ((both >> 16) & 0xFFFF).to(tl.int32))
            tiesB = tl.where(keepB, tiesB, ((both >> 48) & 0xFFFF).to(tl.int32))
            prefixA = tl.where(keepA, prefixA, prefixA | (bA.to(prefixA.dtype) << SHIFT))
            prefixB = tl.where(keepB, prefixB, prefixB | (bB.to(prefixB.dtype) << SHIFT))
            doneA = (tiesA == needA).to(tl.int32)
            doneB = (tiesB == needB).to(tl.int32)
    return prefixA, needA, tiesA, prefixB, needB, tiesB


@triton.jit
def _widened(key, KEY_BITS: tl.constexpr, RBITS: tl.constexpr):
    """A _keys key as an RBITS-bit radix key (unsigned order as a bit pattern): the same signed
    value, widened, with the sign bit flipped."""
    if RBITS == 16:
        return key + 32768
    elif RBITS == 32:
        return key ^ -2147483648
    else:
        return key.to(tl.int64) ^ -9223372036854775808


@triton.jit
def _signed(R, KEY_BITS: tl.constexpr):
    """A radix key (unsigned order) back to the signed key order of _keys."""
    if KEY_BITS == 16:
        return R - 32768
    elif KEY_BITS == 32:
        return R ^ -2147483648
    else:
        return R ^ -9223372036854775808


@triton.jit
def _rank_channels(c, key, ok, T, last, taken, slot_row, chan_list, g):
    """Slots of channels c (their rank among the top ones, ascending; -1 for the others; stored by
    program 0 of the sample) and the list of top channels; returns the top ones counted so far."""
    sel = ok & ((key > T) | ((key == T) & (c <= last)))
    sel32 = sel.to(tl.int32)
    rank = taken + tl.cumsum(sel32, axis=0) - sel32
    tl.store(slot_row + c, tl.where(sel, rank, -1), mask=ok & (g == 0))
    tl.store(chan_list + rank, c, mask=sel)
    return taken + tl.sum(sel32, axis=0)


@triton.jit
def _place_pixels(p, key, ok, T, last, counter, pix_list):
    """Append the top pixels among p to the list, each at a place a relaxed atomic counter gives."""
    sel = ok & ((key > T) | ((key == T) & (p <= last)))
    pos = tl.atomic_add(counter + p * 0, p * 0 + 1, mask=sel, sem="relaxed")
    tl.store(pix_list + pos, p, mask=sel)


@triton.jit
def _popcount32(x):
    """Set bits of each int32 entry (SWAR)."""
    x = x.to(tl.uint32, bitcast=True)
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _finish(ws_ptr, ws_stride, G, N, numel_sample, dropped_ptr, scale_ptr, normalize, FB: tl.constexpr):
    """Run by the last program: per-sample dropped counts from every program's published count,
    then the scales (SPEC.md step 7: float64 quotient, one rounding; nothing kept gives 0)."""
    total = tl.full((), 0, tl.int64)
    numel_sample = _i64(numel_sample)
    numel_f = numel_sample.to(tl.float64)
    for n0 in range(0, N, FB):  # loop: finish
        ii = n0 + tl.arange(0, FB)
        ok = ii < N
        d = tl.zeros([FB], tl.int64)
        for gg in range(0, G):  # loop: finish_programs
            pub = ws_ptr + (ii.to(tl.int64) * G + gg) * ws_stride
            lo = tl.load(pub, mask=ok, other=0, cache_modifier=".cg").to(tl.int64) & 0xFFFFFFFF
            hi = tl.load(pub + 1, mask=ok, other=0, cache_modifier=".cg").to(tl.int64)
            d += (hi << 32) | lo
        tl.store(dropped_ptr + ii, d, mask=ok)
        total += tl.sum(d, axis=0)
        if normalize == 1:
            kept = numel_sample - d
            s = tl.where(kept == 0, 0.0, numel_f / tl.maximum(kept, 1).to(tl.float64))
            tl.store(scale_ptr + ii, s.to(scale_ptr.dtype.element_ty), mask=ok)
        elif normalize == 2:
            tl.store(scale_ptr + ii, tl.full([FB], 1.0, scale_ptr.dtype.element_ty), mask=ok)
    if normalize == 0:
        numel = numel_sample * N
        kept = numel - total
        s = tl.where(kept == 0, 0.0, numel.to(tl.float64) / tl.maximum(kept, 1).to(tl.float64))
        s_vec = tl.full([FB], 0.0, tl.float64) + s
        for n0 in range(0, N, FB):  # loop: finish_scale
            ii = n0 + tl.arange(0, FB)
            tl.store(scale_ptr + ii, s_vec.to(scale_ptr.dtype.element_ty), mask=ii < N)


WS_ROWS = tl.constexpr(16)  # workspace words before the scratch rows: the counter, padded to 64 bytes

# Integers are not specialised (1 as a constant, multiples of 16): one compiled kernel serves
# many shapes; what the code depends on is in the constexprs.
_INTS = ["seed_lo", "seed_hi", "p_lo", "p_hi", "gs_bits", "N", "C", "P", "H", "W", "HW", "n_pix", "n_chan", "words",
         "G", "planes_per_prog", "ws_stride", "numel_sample", "scn", "scd", "sch", "scw", "san", "sac", "m_w", "s_w",
         "m_hw", "s_hw", "lo_d", "hi_d", "lo_h", "hi_h", "lo_w", "hi_w", "num_factor", "den_factor", "up_d", "down_d",
         "up_h", "down_h", "up_w", "rw", "rho", "flags", "hs_stride", "m_words", "s_words"]


@triton.jit(do_not_specialize=_INTS,
            do_not_specialize_on_alignment=["cam_ptr", "alpha_ptr", "seed_ptr", "p_ptr", "slots_ptr", "bits_ptr",
                                            "scale_ptr", "dropped_ptr", "rate_ptr", "ws_ptr"])
def state_kernel(
    cam_ptr, alpha_ptr, seed_ptr, p_ptr, slots_ptr, bits_ptr, scale_ptr, dropped_ptr, rate_ptr, ws_ptr,
    seed_lo, seed_hi, p_lo, p_hi,
    gs_bits, N, C, P, H, W, HW, n_pix, n_chan, words, G, planes_per_prog, ws_stride, numel_sample,
    scn, scd, sch, scw, san, sac, m_w, s_w, m_hw, s_hw,
    lo_d, hi_d, lo_h, hi_h, lo_w, hi_w, num_factor, den_factor,
    up_d, down_d, up_h, down_h, up_w, rw, rho, flags, hs_stride, m_words, s_words,
    CAM_BITS: tl.constexpr, CAM_EXP: tl.constexpr, CAM_NEG_INF: tl.constexpr, CAM_LAYOUT: tl.constexpr,
    A_LAYOUT: tl.constexpr, CAM_IDX_BITS: tl.constexpr, CAM_BLOCK: tl.constexpr, CAM_SINGLE: tl.constexpr,
    A_BITS: tl.constexpr, A_EXP: tl.constexpr, A_NEG_INF: tl.constexpr, A_IDX_BITS: tl.constexpr,
    A_BLOCK: tl.constexpr, A_SINGLE: tl.constexpr, JBITS: tl.constexpr, WPR: tl.constexpr, GUARD: tl.constexpr,
    SB: tl.constexpr, PB: tl.constexpr, ZB: tl.constexpr, FB: tl.constexpr,
):
    pid = tl.program_id(0)
    i = pid // G
    g = pid - i * G
    i64 = i.to(tl.int64)
    # This program's scratch row: [count lo, count hi, pixel counter, -, 256 histogram bins (Triton
    # < 3.8), n' top channels, n top pixels].
    # The workspace: the completion counter at word 0 (zero between launches), then one scratch row
    # per program from word WS_ROWS on.
    counter_ptr = ws_ptr
    rows_ptr = ws_ptr + WS_ROWS
    ws = rows_ptr + pid.to(tl.int64) * ws_stride
    hist_ptr = ws + 4
    chan_list = ws + 4 + HIST_WORDS
    pix_list = chan_list + n_chan
    tl.store(ws + 2, 0)

    arow = alpha_ptr + i64 * san
    crow = cam_ptr + i64 * scn
    # Run-time switches (bits of ``flags``, see FLAGS in __init__.py): uniform branches.
    normalize = (flags >> 6) & 3
    if A_SINGLE and CAM_SINGLE:
        # Steps 1-2 ranking: both rows fit in registers, loaded together and ranked in lockstep.
        c = tl.arange(0, A_BLOCK)
        ka, oka = _keys(arow, c, C, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT, A_BITS, A_EXP, A_NEG_INF)
        p = tl.arange(0, CAM_BLOCK)
        kp, okp = _keys(crow, p, P, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, CAM_LAYOUT, CAM_BITS, CAM_EXP,
                        CAM_NEG_INF)
        Ra, need_a, ties_a, Rp, need_p, ties_p = _radix_pair(hist_ptr, _widened(ka, A_BITS, JBITS), oka, n_chan,
                                                             _widened(kp, CAM_BITS, JBITS), okp, n_pix, JBITS)
        Ta, last_a = _threshold(hist_ptr, Ra, need_a, ties_a, arow, C, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT,
                                A_BITS, A_EXP,
                                A_NEG_INF, A_IDX_BITS, A_BLOCK, A_SINGLE, JBITS)
        Tp, last_p = _threshold(hist_ptr, Rp, need_p, ties_p, crow, P, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw,
                                CAM_LAYOUT, CAM_BITS, CAM_EXP, CAM_NEG_INF, CAM_IDX_BITS, CAM_BLOCK, CAM_SINGLE, JBITS)
        # Step 2: the top channels, numbered in ascending channel order (slots), listed in that order.
        _rank_channels(c, ka, oka, Ta, last_a, 0, slots_ptr + i64 * C, chan_list, g)
        # Step 1: the top pixels, listed in scratch in any order (a counter hands out the places:
        # the seeds' order matters nowhere, and this needs no scan).
        tl.debug_barrier()  # the zeroed counter is visible
        _place_pixels(p, kp, okp, Tp, last_p, ws + 2, pix_list)
    else:
        Ta, last_a = _select(hist_ptr, arow, C, n_chan, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT, A_BITS, A_EXP,
                             A_NEG_INF,
                             A_IDX_BITS, A_BLOCK, A_SINGLE)
        taken = tl.full((), 0, tl.int32)
        for c0 in range(0, C, A_BLOCK):  # loop: channels
            c = c0 + tl.arange(0, A_BLOCK)
            key, ok = _keys(arow, c, C, sac, 0, 0, 0, 1, 1, 0, 0, 0, 0, A_LAYOUT, A_BITS, A_EXP, A_NEG_INF)
            taken = _rank_channels(c, key, ok, Ta, last_a, taken, slots_ptr + i64 * C, chan_list, g)
        Tp, last_p = _select(hist_ptr, crow, P, n_pix, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, CAM_LAYOUT,
                             CAM_BITS,
                             CAM_EXP, CAM_NEG_INF, CAM_IDX_BITS, CAM_BLOCK, CAM_SINGLE)
        tl.debug_barrier()  # the zeroed counter is visible
        for p0 in range(0, P, CAM_BLOCK):  # loop: pixels
            p = p0 + tl.arange(0, CAM_BLOCK)
            key, ok = _keys(crow, p, P, scw, scd, sch, scw, W, HW, m_w, s_w, m_hw, s_hw, CAM_LAYOUT, CAM_BITS,
                            CAM_EXP, CAM_NEG_INF)
            _place_pixels(p, key, ok, Tp, last_p, ws + 2, pix_list)
    # Steps 5-6 for this program's planes [j_lo, j_hi), in three phases over scratch copies of
    # the planes (NH of them: one for boxes; for diamonds one per half-width k = 0 .. rho), each
    # plane padded by GUARD zero words on both sides:
    # (a) zero the copies;
    # (b) draw U at the (plane, eligible pixel) lanes and OR each firing seed's run along w into
    #     the copies (copy k: the run of half-width k; boxes: up_w before the seed, rw long): one
    #     relaxed atomic per seed and word, not one per block row;
    # (c) dilate along the other axes in registers: block row (dd, dh) is the copy's bits moved
    #     by (dd*H + dh)*W along the flat plane, a funnel shift of two words; OR the rows, store
    #     the planes, count their bits. Seeds are valid centres, so no shifted run leaves the map.
    j_lo = g * planes_per_prog
    j_hi = tl.minimum(j_lo + planes_per_prog, n_chan)
    planes = tl.maximum(j_hi - j_lo, 0)
    region = planes * words  # words of this program's planes
    diamond = (flags & 16) != 0
    nh = tl.where(diamond, rho + 1, 1)
    copy_words = planes_per_prog * hs_stride  # one copy of the program's padded planes
    hs = pix_list + n_pix
    for z0 in range(0, nh * copy_words, ZB):  # loop: zero
        z = z0 + tl.arange(0, ZB)
        tl.store(hs + z, tl.zeros([ZB], tl.int32), mask=z < nh * copy_words)
    tl.debug_barrier()  # the pixel list and the zeroed copies are visible to every thread

    # The first chunks of both lists, loaded together (one round trip); the mask build below
    # starts from them.
    s_first = tl.arange(0, SB)
    ps_first = tl.load(pix_list + s_first, mask=s_first < n_pix, other=0)
    j_first = j_lo + tl.arange(0, PB)
    cj_first = tl.load(chan_list + j_first, mask=j_first < j_hi, other=0)

    # Step 3: |S ∩ V|, the top pixels that are valid centres.
    ok_first = (s_first < n_pix) & _valid(ps_first, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w)
    kept = tl.sum(ok_first.to(tl.int32), axis=0)
    for s0 in range(SB, n_pix, SB):  # loop: valid
        s = s0 + tl.arange(0, SB)
        ps = tl.load(pix_list + s, mask=s < n_pix, other=0)
        ok = (s < n_pix) & _valid(ps, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w)
        kept += tl.sum(ok.to(tl.int32), axis=0)

    # Step 4 in float64, left to right: drop_prob * gamma_scale * F / (A * n' * |S ∩ V|) ("eligible",
    # F = C*P) or / (A * |V|) ("dropblock", F = P); clamped to [0, 1] (NaN to 0), then float32.
    p_bits = (_i64(p_hi) << 32) | (_i64(p_lo) & 0xFFFFFFFF)  # the float64 bit pattern in two int32 halves
    prob = p_bits.to(tl.float64, bitcast=True)
    if (flags & 2) != 0:  # the rate in device memory (CUDA graphs, torch.compile)
        prob = tl.load(p_ptr)
    gs = (tl.full((), 0, tl.int64) + gs_bits).to(tl.float64, bitcast=True)
    num = prob * gs * _i64(num_factor).to(tl.float64)
    # den_factor is A * n' ("eligible": times |S ∩ V|) or A * |V| ("dropblock").
    den = tl.where((flags & 1) != 0, kept.to(tl.int64) * _i64(den_factor), _i64(den_factor)).to(tl.float64)
    gam = num / tl.maximum(den, 1.0)  # den is 0 only when nothing is eligible: the rate is 0 then
    gam = tl.where((den > 0.0) & (gam > 0.0), tl.minimum(gam, 1.0), 0.0)
    gamma = gam.to(tl.float32)
    tl.store(rate_ptr + i, gamma, mask=g == 0)

    k0, k1 = seed_key(seed_ptr, seed_lo, seed_hi, flags & 4)
    zero2 = tl.zeros([PB, SB], tl.int32)
    for j0 in range(j_lo, j_hi, PB):  # loop: planes
        j = j0 + tl.arange(0, PB)
        j_ok = j < j_hi
        c_j = cj_first
        if j0 != j_lo:  # cold: more planes per program than one step holds
            c_j = tl.load(chan_list + j, mask=j_ok, other=0)
        o_plane = (i64 * C + c_j.to(tl.int64)) * P  # logical index o of (i, c_j, pixel 0)
        w_plane = hs + GUARD + (j - j_lo) * hs_stride  # word 0 of plane j in copy 0
        for s0 in range(0, n_pix, SB):  # loop: seeds
            ps = ps_first
            s_ok = ok_first
            if s0 != 0:  # cold: more top pixels than one step holds
                s = s0 + tl.arange(0, SB)
                ps = tl.load(pix_list + s, mask=s < n_pix, other=0)
                s_ok = (s < n_pix) & _valid(ps, W, HW, m_w, s_w, m_hw, s_hw, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w)
            u = uniform(k0, k1, o_plane[:, None] + ps[None, :])
            fire = j_ok[:, None] & s_ok[None, :] & (u < gamma)
            if tl.max(tl.max(fire.to(tl.int32), axis=1), axis=0) > 0:
                for k in range(0, nh):  # loop: runs
                    width = tl.where(diamond, 2 * k + 1, rw)
                    start = ps - tl.where(diamond, k, up_w)  # the run's first bit, flat in the plane
                    w0 = start >> 5
                    b = start & 31
                    base = w_plane[:, None] + k * copy_words + w0[None, :]
                    if WPR == 2:
                        # width <= 32: the run is one 64-bit pattern over words w0 and w0 + 1.
                        pat = ((tl.full((), 1, tl.int64) << width) - 1) << b.to(tl.int64)
                        # (Values as full [PB, SB] tensors: Triton's interpreter reads a broadcast
                        # value operand of an atomic as if it were dense.)
                        lo2 = zero2 + pat.to(tl.int32)[None, :]
                        hi2 = zero2 + (pat >> 32).to(tl.int32)[None, :]
                        tl.atomic_or(base, lo2, mask=fire, sem="relaxed")
                        tl.atomic_or(base + 1, hi2, mask=fire & (hi2 != 0), sem="relaxed")
                    else:
                        for t in tl.static_range(WPR):
                            if t == 0:
                                lo = b
                            else:
                                lo = b * 0
                            hi = tl.minimum(b + width - 32 * t, 32)  # bits [lo, hi) of word w0 + t
                            nbits = tl.maximum(hi - lo, 0).to(tl.int64)
                            ones = ((tl.full((), 1, tl.int64) << nbits) - 1) << lo.to(tl.int64)
                            tl.atomic_or(base + t, zero2 + ones.to(tl.int32)[None, :], mask=fire & (hi > lo)[None, :],
                                         sem="relaxed")
    tl.debug_barrier()  # every run is in

    count = tl.full((), 0, tl.int64)
    plane0 = bits_ptr + (i64 * n_chan + j_lo) * words
    for z0 in range(0, region, ZB):  # loop: dilate
        z = z0 + tl.arange(0, ZB)
        z_ok = z < region
        jr = _udiv(z, m_words, s_words)  # plane (relative) and word of each lane
        w = z - jr * words
        src = hs + GUARD + jr * hs_stride + w
        dil = tl.zeros([ZB], tl.int32)
        for dd in range(-up_d, down_d + 1):  # loop: rows_d
            for dh in range(-up_h, down_h + 1):  # loop: rows_h
                kk = tl.where(diamond, rho - tl.abs(dd) - tl.abs(dh), 0)  # the row's run: copy kk
                if kk >= 0:  # (a diamond's outer rows are absent)
                    shift = (dd * H + dh) * W  # the row's offset from the seed, flat in the plane
                    q = shift >> 5
                    r = shift & 31
                    row = src + kk * copy_words - q
                    upper = tl.load(row, mask=z_ok, other=0, cache_modifier=".cg")
                    lower = tl.load(row - 1, mask=z_ok, other=0, cache_modifier=".cg")
                    pair = ((upper.to(tl.uint32, bitcast=True).to(tl.uint64) << 32)
                            | lower.to(tl.uint32, bitcast=True).to(tl.uint64))
                    # bit x of the row is bit x - shift of the copy: (upper << r) | (lower >> (32 - r)).
                    dil |= ((pair >> (32 - r)) & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True)
        tl.store(plane0 + z, dil, mask=z_ok)
        count += tl.sum(_popcount32(dil), axis=0).to(tl.int64)

    if (flags & 8) != 0:
        tl.store(ws, (count & 0xFFFFFFFF).to(tl.int32))
        tl.store(ws + 1, (count >> 32).to(tl.int32))
        tl.debug_barrier()
        # Release this program's count, acquire everyone's; the last ticket finishes the batch.
        ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        if ticket == N * G - 1:  # cold: one program per launch
            _finish(rows_ptr, ws_stride, G, N, numel_sample, dropped_ptr, scale_ptr, normalize, FB)
            tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    else:  # one program per sample and a per-sample scale: finish here
        tl.store(dropped_ptr + i, count)
        if normalize == 1:
            left_ = _i64(numel_sample) - count
            sc = tl.where(left_ == 0, 0.0, _i64(numel_sample).to(tl.float64) / tl.maximum(left_, 1).to(tl.float64))
            tl.store(scale_ptr + i, sc.to(scale_ptr.dtype.element_ty))
        else:
            tl.store(scale_ptr + i, tl.full((), 1.0, scale_ptr.dtype.element_ty))
