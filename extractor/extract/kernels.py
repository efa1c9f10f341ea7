"""Zonal statistics per parcel, numba-compiled, over pixel runs.

A parcel's pixels are given as runs on the rows of a window: (row, col, length), grouped per
parcel by `offsets` (CSR: the runs of parcel i are offsets[i]:offsets[i+1]). Rules
(docs/extraction.md):
  * nodata: pixels equal to 0 (and NaN) are left out; a parcel without valid pixels gets count 0.
  * mean and std in double precision; std is the population standard deviation (ddof=0, as
    numpy.std and rasterstats).
  * percentiles p25, p50, p75 with NumPy's default method ('linear', Hyndman & Fan type 7),
    the same interpolation formula as numpy's _lerp, so results equal numpy.percentile.
`reference_stats` is the plain NumPy reference used by the tests.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload


@njit(cache=True, nogil=True, inline="always")
def _lerp(a, b, t):
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@njit(cache=True, nogil=True)
def _percentile(sorted_vals, n, q):
    pos = (n - 1) * q
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    t = pos - lo
    return _lerp(np.float64(sorted_vals[lo]), np.float64(sorted_vals[hi]), t)


@njit(cache=True, nogil=True)
def _quantiles_sorted(vals, m, out):
    """p25, p50, p75 into out[5:8], by sorting (any dtype, e.g. S1 float32)."""
    v = vals[:m]
    v.sort()
    out[5] = _percentile(v, m, 0.25)
    out[6] = _percentile(v, m, 0.5)
    out[7] = _percentile(v, m, 0.75)


@njit(cache=True, nogil=True)
def _quantiles_f32(vals, m, out):
    """p25, p50, p75 into out[5:8] for float32 (S1 backscatter, coherence): an LSD radix sort of
    the IEEE bit patterns (which order like unsigned integers for values >= 0; any negative value
    falls back to a comparison sort). Byte passes where all values agree are skipped."""
    v = vals[:m]
    for i in range(m):
        if v[i] < 0:
            _quantiles_sorted(vals, m, out)
            return
    keys = v.view(np.uint32)
    tmp = np.empty(m, np.uint32)
    count = np.empty(256, np.int64)
    src, dst = keys, tmp
    swapped = False
    for p in range(4):
        shift = 8 * p
        count[:] = 0
        for i in range(m):
            count[(src[i] >> shift) & 255] += 1
        if count[(src[0] >> shift) & 255] == m:
            continue  # every value has the same byte here
        total = 0
        for b in range(256):
            c = count[b]
            count[b] = total
            total += c
        for i in range(m):
            b = (src[i] >> shift) & 255
            dst[count[b]] = src[i]
            count[b] += 1
        src, dst = dst, src
        swapped = not swapped
    if swapped:
        keys[:] = tmp
    out[5] = _percentile(v, m, 0.25)
    out[6] = _percentile(v, m, 0.5)
    out[7] = _percentile(v, m, 0.75)


@njit(cache=True, nogil=True)
def _quantiles_u16(vals, m, out):
    """p25, p50, p75 into out[5:8] without sorting, for integers below 65536 (S2 DN).

    The six order statistics the interpolation needs are found with a histogram of the high
    byte (which 256-value bin holds each rank) and histograms of the low byte of those bins
    only: two passes over the values, exact, whatever the order of the pixels."""
    high = np.zeros(256, np.int64)
    for i in range(m):
        high[vals[i] >> 8] += 1
    ranks = np.empty(6, np.int64)
    ts = np.empty(3, np.float64)
    for j in range(3):
        pos = (m - 1) * (0.25 * (j + 1))
        lo = int(np.floor(pos))
        ranks[2 * j] = lo
        ranks[2 * j + 1] = min(lo + 1, m - 1)
        ts[j] = pos - lo
    slot = np.full(256, -1, np.int64)
    rank_slot = np.empty(6, np.int64)
    rank_bin = np.empty(6, np.int64)
    rank_within = np.empty(6, np.int64)
    nslots = 0
    cum = 0
    b = 0
    for j in np.argsort(ranks):  # in ascending rank order: walk the bins once
        r = ranks[j]
        while cum + high[b] <= r:
            cum += high[b]
            b += 1
        if slot[b] < 0:
            slot[b] = nslots
            nslots += 1
        rank_slot[j] = slot[b]
        rank_bin[j] = b
        rank_within[j] = r - cum
    low = np.zeros((nslots, 256), np.int64)
    for i in range(m):
        v = vals[i]
        sl = slot[v >> 8]
        if sl >= 0:
            low[sl, v & 255] += 1
    stat = np.empty(6, np.float64)
    for j in range(6):
        c = 0
        row = rank_slot[j]
        for lb in range(256):
            c += low[row, lb]
            if c > rank_within[j]:
                stat[j] = rank_bin[j] * 256 + lb
                break
    for j in range(3):
        out[5 + j] = _lerp(stat[2 * j], stat[2 * j + 1], ts[j])


@njit(cache=True, nogil=True)
def _parcel_basic(img, rows, cols, lens, offsets, p, row):
    """Gather the valid pixels of parcel p; fills count, mean, std, min, max into row[0:5].
    Returns the values (first m are valid) and m."""
    n = 0
    for k in range(offsets[p], offsets[p + 1]):
        n += lens[k]
    vals = np.empty(n, dtype=img.dtype)
    m = 0
    total = 0.0
    vmin = np.inf
    vmax = -np.inf
    for k in range(offsets[p], offsets[p + 1]):
        r = rows[k]
        c0 = cols[k]
        for c in range(c0, c0 + lens[k]):
            v = img[r, c]
            if v != 0 and v == v:
                vals[m] = v
                total += v
                if v < vmin:
                    vmin = v
                if v > vmax:
                    vmax = v
                m += 1
    if m == 0:
        return vals, 0
    mean = total / m
    ss = 0.0
    for i in range(m):
        d = vals[i] - mean
        ss += d * d
    row[0] = m
    row[1] = mean
    row[2] = np.sqrt(ss / m)
    row[3] = vmin
    row[4] = vmax
    return vals, m


def _quantiles(vals, m, out):
    """p25, p50, p75 into out[5:8] by the method for the type of the values (chosen by numba when
    it compiles a kernel for a band type, see _quantiles_for); callable from numba code only."""
    raise NotImplementedError("numba code only")


@overload(_quantiles, jit_options={"nogil": True})
def _quantiles_for(vals, m, out):
    if vals.dtype in (types.uint8, types.uint16):
        return lambda vals, m, out: _quantiles_u16(vals, m, out)
    if vals.dtype == types.float32:
        return lambda vals, m, out: _quantiles_f32(vals, m, out)
    return lambda vals, m, out: _quantiles_sorted(vals, m, out)


@njit(parallel=True, cache=True, nogil=True)
def _zonal_stats(img, rows, cols, lens, offsets):
    out = np.zeros((offsets.shape[0] - 1, 8), dtype=np.float64)
    for p in prange(offsets.shape[0] - 1):
        vals, m = _parcel_basic(img, rows, cols, lens, offsets, p, out[p])
        if m:
            _quantiles(vals, m, out[p])
    return out


def zonal_stats(img, rows, cols, lens, offsets) -> np.ndarray:
    """Per parcel: count, mean, std, min, max, p25, p50, p75 of the valid pixels (float64 (P, 8)).
    Percentiles: a histogram selection for unsigned integer bands (S2 DN), a radix sort for
    float32 (S1), a comparison sort otherwise; all give numpy.percentile's 'linear' values.
    numba compiles (and caches) one kernel per band type, with the method of that type."""
    return _zonal_stats(img, rows, cols, lens, offsets)


@njit(parallel=True, cache=True, nogil=True)
def class_histograms(img, rows, cols, lens, offsets, nclasses):
    """Per parcel: pixel count per class value 1..nclasses-1 (class 0 = nodata is left out)."""
    nparcels = offsets.shape[0] - 1
    out = np.zeros((nparcels, nclasses), dtype=np.int64)
    for p in prange(nparcels):
        for k in range(offsets[p], offsets[p + 1]):
            r = rows[k]
            c0 = cols[k]
            for c in range(c0, c0 + lens[k]):
                v = img[r, c]
                if v != 0:
                    out[p, v] += 1
    return out


def reference_stats(values: np.ndarray) -> tuple | None:
    """The same statistics with plain NumPy over one parcel's pixel values (test reference)."""
    v = np.asarray(values).ravel()
    v = v[(v != 0) & ~np.isnan(v.astype(np.float64))].astype(np.float64)
    if v.size == 0:
        return None
    p25, p50, p75 = np.percentile(v, [25, 50, 75])
    return (v.size, v.mean(), v.std(), v.min(), v.max(), p25, p50, p75)


def warm_up(dtype, histogram: bool) -> None:
    """Load (or compile) the kernels for this band type once per process, not inside a scene."""
    img = np.ones((1, 1), dtype=dtype)
    runs = (np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.int32), np.array([0, 1], np.int64))
    if histogram:
        class_histograms(img, *runs, 2)
    else:
        zonal_stats(img, *runs)
