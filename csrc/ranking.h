// The ranking of SPEC.md steps 1-2: larger first, NaN as -inf, -0.0 == +0.0, ties to the lower index.
//
// A row's values become unsigned keys that order like the rule (order_keys.h); then, over the keys:
//
//   top_n_heap  a heap of the n best entries so far, its worst on top (fed in index order, so an
//               entry that only ties the top never displaces it): O(L log n) comparisons in the
//               worst case, and about L when n is much smaller than L, since nearly every entry
//               then fails one comparison.
//   nth_key     the n-th largest key t of key[0..L) (1 <= n < L), and need_eq: the top n entries
//               are every key above t and the first need_eq keys equal to t in index order
//               (kAllTies: all of them). Radix select, most significant byte first: a 256-bin
//               histogram of the current byte over the candidates tells which byte value b holds
//               the n-th entry; entries above b are in, entries at b stay candidates (their key
//               values, compacted branch-free into ``cand``; where every candidate shares b the
//               list stays as it is), and the next byte's histogram is counted over the kept ones
//               only. At most (bits / 8) rounds over shrinking lists, so O(2 (bits / 8) L) in the
//               worst case (all keys equal) whatever the input: no input makes it quadratic.
//   take_top    slot[k] = the entry's rank in index order among the top n (t, need_eq from
//               nth_key) or -1, and chan_row[r] = the entry of rank r (chan_row holds L + 8:
//               entries past the last rank are written); returns n.
//   top_n       mark[k] = 1 for the n top entries (1 <= n <= L), else 0: the heap when n <= L/32,
//               else nth_key and one pass.
//
// The templates take the key type (uint32_t for float16/bfloat16/float32 rows, uint64_t for
// float64) and a visit counter: NoVisits in the product (it compiles to nothing); the testing
// build (CAMDROP_TESTING) counts element visits to check the cost bound.
#pragma once

#include "common.h"

namespace camdrop {

struct NoVisits {
    void operator+=(uint64_t) {}
};

#if defined(CAMDROP_TESTING)
struct Visits {
    uint64_t n = 0;
    void operator+=(uint64_t k) { n += k; }
};
#endif

constexpr int64_t kAllTies = INT64_MAX; // need_eq when every key equal to the threshold is in

#if defined(CAMDROP_X86)
// The AVX2 pieces (ranking.cpp), for 32-bit keys: compact and take_top (every tie in) 8 at a time.
int64_t compact32_avx2(const uint32_t *src, int64_t m, uint32_t *dst, int shift, uint32_t prefix);
int64_t take_top32_avx2(const uint32_t *key, int64_t L, uint32_t t, int32_t *slot, int32_t *chan_row);
#endif

// dst[0..kept) = the entries v of src[0..m) with v >> shift == prefix, in order (dst may be src:
// kept <= t); returns kept. Branch-free: every entry is stored, the count advances on a match.
template <typename Key>
inline int64_t compact(const Key *src, int64_t m, Key *dst, int shift, Key prefix) {
#if defined(CAMDROP_X86)
    if (sizeof(Key) == 4 && have_avx2 && m >= 64)
        return compact32_avx2(reinterpret_cast<const uint32_t *>(src), m, reinterpret_cast<uint32_t *>(dst), shift,
                              (uint32_t)prefix);
#endif
    int64_t kept = 0;
    for (int64_t t = 0; t < m; ++t) {
        const Key v = src[t];
        dst[kept] = v;
        kept += (v >> shift) == prefix;
    }
    return kept;
}

// take_top where every tie is in, vectorised (AVX2, 32-bit keys): true and *taken set when it ran.
template <typename Key>
inline bool take_top_fast(const Key *key, int64_t L, Key t, int32_t *slot, int32_t *chan_row, int64_t *taken) {
#if defined(CAMDROP_X86)
    if (sizeof(Key) == 4 && have_avx2) {
        *taken = take_top32_avx2(reinterpret_cast<const uint32_t *>(key), L, (uint32_t)t, slot, chan_row);
        return true;
    }
#endif
    (void)key, (void)L, (void)t, (void)slot, (void)chan_row, (void)taken;
    return false;
}

// Entry a ranks below entry b.
template <typename Key>
inline bool worse(const Key *key, int64_t a, int64_t b) {
    return key[a] < key[b] || (key[a] == key[b] && a > b);
}

template <typename Key, typename V>
void top_n_heap(const Key *key, int64_t L, int64_t n, int64_t *heap, uint8_t *mark, V &visits) {
    for (int64_t k = 0; k < L; ++k) {
        int64_t c;
        if (k < n) { // grow: sift the new entry up (the parent of c is (c - 1) / 2)
            heap[k] = k;
            for (c = k; c > 0 && worse(key, heap[c], heap[(c - 1) / 2]); c = (c - 1) / 2) {
                const int64_t t = heap[c];
                heap[c] = heap[(c - 1) / 2];
                heap[(c - 1) / 2] = t;
                visits += 1;
            }
            continue;
        }
        visits += 1;
        if (!(key[k] > key[heap[0]])) continue; // a tie with the top loses: its index is larger
        heap[0] = k;
        for (c = 0;;) { // sift down: children 2c + 1 and 2c + 2
            const int64_t l = 2 * c + 1, r = l + 1;
            int64_t m = c;
            if (l < n && worse(key, heap[l], heap[m])) m = l;
            if (r < n && worse(key, heap[r], heap[m])) m = r;
            visits += 1;
            if (m == c) break;
            const int64_t t = heap[c];
            heap[c] = heap[m];
            heap[m] = t;
            c = m;
        }
    }
    zero_bytes(mark, (size_t)L);
    for (int64_t k = 0; k < n; ++k) mark[heap[k]] = 1;
}

template <typename Key, typename V>
Key nth_key(const Key *key, int64_t L, int64_t n, Key *cand, int64_t *need_eq, V &visits) {
    constexpr int64_t kChunk = (int64_t)1 << 28; // int32 sub-histogram counts: 2**28 entries at a time
    int32_t h4[4][256];
    int64_t hist[256];
    const Key *src = key; // the candidates: every entry, then the compacted list
    int64_t m = L, need = n;
    int shift = (int)(8 * sizeof(Key)) - 8;
    std::memset(hist, 0, sizeof(hist));
    for (int64_t k0 = 0; k0 < L; k0 += kChunk) {
        const int64_t k1 = L - k0 < kChunk ? L : k0 + kChunk;
        int64_t k = k0;
        std::memset(h4, 0, sizeof(h4));
        for (; k + 4 <= k1; k += 4) { // four sub-histograms: no chain of increments on one bin
            h4[0][(key[k] >> shift) & 255]++;
            h4[1][(key[k + 1] >> shift) & 255]++;
            h4[2][(key[k + 2] >> shift) & 255]++;
            h4[3][(key[k + 3] >> shift) & 255]++;
        }
        for (; k < k1; ++k) h4[0][(key[k] >> shift) & 255]++;
        for (int d = 0; d < 256; ++d) hist[d] += h4[0][d] + h4[1][d] + h4[2][d] + h4[3][d]; // < 2**30: int32
    }
    visits += (uint64_t)L;
    Key prefix = 0; // the bytes fixed so far: every candidate's key >> shift equals prefix
    for (;;) {
        int b = 255;
        int64_t above = 0;
        while (above + hist[b] < need) above += hist[b--]; // hist sums to m >= need: b stays >= 0
        need -= above;
        prefix = (Key)(prefix << 8) | (Key)b;
        if (hist[b] != m) { // keep the candidates at b (in place: kept <= t)
            const int64_t kept = compact(src, m, cand, shift, prefix);
            visits += (uint64_t)m;
            src = cand;
            m = kept;
        }
        if (need == m) { // every candidate is in: t is the smallest, and every tie with it is in
            Key t = src[0];
            for (int64_t k = 1; k < m; ++k) t = src[k] < t ? src[k] : t;
            visits += (uint64_t)m;
            *need_eq = kAllTies;
            return t;
        }
        if (shift == 0) { // the candidates share one key: the first `need` of them in index order
            *need_eq = need;
            return src[0];
        }
        shift -= 8;
        std::memset(hist, 0, sizeof(hist));
        for (int64_t t = 0; t < m; ++t) hist[(src[t] >> shift) & 255]++;
        visits += (uint64_t)m;
    }
}

template <typename Key>
int64_t take_top(const Key *key, int64_t L, Key t, int64_t need_eq, int32_t *slot, int32_t *chan_row) {
    int64_t j = 0;
    if (need_eq == kAllTies && take_top_fast(key, L, t, slot, chan_row, &j)) return j;
    if (need_eq == kAllTies) {
        for (int64_t k = 0; k < L; ++k) {
            const int take = key[k] >= t;
            slot[k] = take ? (int32_t)j : -1;
            chan_row[j] = (int32_t)k; // overwritten by the next entry unless this one is taken
            j += take;
        }
        return j;
    }
    int64_t eq = 0;
    for (int64_t k = 0; k < L; ++k) {
        const int at = key[k] == t, take = (key[k] > t) | (at & (eq < need_eq));
        eq += at;
        slot[k] = take ? (int32_t)j : -1;
        chan_row[j] = (int32_t)k;
        j += take;
    }
    return j;
}

template <typename Key, typename V>
void top_n(const Key *key, int64_t L, int64_t n, int64_t *cand, uint8_t *mark, V &visits) {
    if (n >= L) {
        if (L > 0) std::memset(mark, 1, (size_t)L);
        return;
    }
    if (32 * n <= L) { // few winners: the heap touches each entry about once
        top_n_heap(key, L, n, cand, mark, visits);
        return;
    }
    int64_t need_eq, eq = 0;
    const Key t = nth_key(key, L, n, reinterpret_cast<Key *>(cand), &need_eq, visits);
    for (int64_t k = 0; k < L; ++k) {
        const int at = key[k] == t;
        mark[k] = (uint8_t)((key[k] > t) | (at & (eq < need_eq)));
        eq += at;
    }
    visits += (uint64_t)L;
}

// top_n on a row of keys ``bits`` wide (row_keys' answer, order_keys.h).
template <typename V>
void top_n(const void *key, int bits, int64_t L, int64_t n, int64_t *cand, uint8_t *mark, V &visits) {
    if (bits == 32) top_n(static_cast<const uint32_t *>(key), L, n, cand, mark, visits);
    else top_n(static_cast<const uint64_t *>(key), L, n, cand, mark, visits);
}

} // namespace camdrop
