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
from numba import njit, prange

STATS = ("count", "mean", "std", "min", "max", "p25", "p50", "p75")


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


@njit(parallel=True, cache=True, nogil=True)
def zonal_stats(img, rows, cols, lens, offsets):
    """Per parcel: count, mean, std, min, max, p25, p50, p75 of the valid pixels (float64 (P, 8))."""
    nparcels = offsets.shape[0] - 1
    out = np.zeros((nparcels, 8), dtype=np.float64)
    for p in prange(nparcels):
        n = 0
        for k in range(offsets[p], offsets[p + 1]):
            n += lens[k]
        if n == 0:
            continue
        buf = np.empty(n, dtype=img.dtype)
        m = 0
        total = 0.0
        for k in range(offsets[p], offsets[p + 1]):
            r = rows[k]
            c0 = cols[k]
            for c in range(c0, c0 + lens[k]):
                v = img[r, c]
                if v != 0 and v == v:
                    buf[m] = v
                    total += v
                    m += 1
        if m == 0:
            continue
        vals = np.sort(buf[:m])
        mean = total / m
        ss = 0.0
        for i in range(m):
            d = vals[i] - mean
            ss += d * d
        out[p, 0] = m
        out[p, 1] = mean
        out[p, 2] = np.sqrt(ss / m)
        out[p, 3] = vals[0]
        out[p, 4] = vals[m - 1]
        out[p, 5] = _percentile(vals, m, 0.25)
        out[p, 6] = _percentile(vals, m, 0.5)
        out[p, 7] = _percentile(vals, m, 0.75)
    return out


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
