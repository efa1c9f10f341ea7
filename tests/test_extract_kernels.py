"""The numba kernels against a plain NumPy reference on the same pixel sets (no database)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extractor.extract import kernels, writer


def as_runs(groups: list[np.ndarray]):
    """One image row per parcel: runs (row, col, len) and CSR offsets."""
    width = max(len(g) for g in groups)
    img = np.zeros((len(groups), width), dtype=groups[0].dtype)
    for i, g in enumerate(groups):
        img[i, :len(g)] = g
    rows = np.arange(len(groups), dtype=np.int32)
    cols = np.zeros(len(groups), np.int32)
    lens = np.array([len(g) for g in groups], np.int32)
    return img, rows, cols, lens, np.arange(len(groups) + 1, dtype=np.int64)


def check(groups):
    out = kernels.zonal_stats(*as_runs(groups))
    for g, row in zip(groups, out):
        ref = kernels.reference_stats(g)
        if ref is None:
            assert row[0] == 0
            continue
        assert row[0] == ref[0] and row[3] == ref[3] and row[4] == ref[4]
        assert row[1] == pytest.approx(ref[1], rel=1e-12)
        assert row[2] == pytest.approx(ref[2], rel=1e-9, abs=1e-12)
        assert tuple(row[5:]) == tuple(ref[5:])  # exactly numpy.percentile (linear)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_stats_equal_numpy_on_awkward_sets(dtype):
    rng = np.random.default_rng(3)
    hi = 255 if dtype == np.uint8 else 65535
    groups = [np.array([7], dtype), np.array([3, 9], dtype), np.full(11, 42, dtype), np.array([0, 0, 0], dtype),
              np.array([0, 5, 0, 6], dtype)]
    for n in (2, 3, 4, 5, 6, 7, 17, 256, 1001):  # small n: the six ranks are not in order
        if dtype == np.float32:
            groups.append(rng.uniform(0.0, 2.0, n).astype(dtype))
        else:
            groups.append(rng.integers(0, hi, n, endpoint=True).astype(dtype))
            groups.append((rng.integers(0, 4, n) + 250).astype(dtype))  # around a byte boundary
    if dtype == np.float32:
        groups.append(np.array([-1.5, 0.25, 3.0, np.nan, -0.0], dtype))   # negatives, NaN as nodata
    check(groups)


def test_class_histograms_and_their_copy_text():
    groups = [np.array([4, 4, 5, 0, 9], np.uint8), np.array([0, 0], np.uint8), np.array([11, 4], np.uint8)]
    img, rows, cols, lens, offsets = as_runs(groups)
    counts = kernels.class_histograms(img, rows, cols, lens, offsets, 12)
    assert counts[0, 4] == 2 and counts[0, 5] == 1 and counts[0, 9] == 1 and counts[0, 0] == 0
    text, n = writer._hists_text(np.array([10, 20, 30]), 7, counts)
    lines = text.tobytes().decode().splitlines()
    assert n == 2 and len(lines) == 2  # parcel 20 has only nodata: no row
    pid, obsid, hist = lines[0].split("\t")
    assert (pid, obsid) == ("10", "7") and json.loads(hist) == {"4": 2, "5": 1, "9": 1}
    assert hist == writer.hist_json(counts[0])
    assert lines[1].split("\t")[2] == '{"4": 1, "11": 1}'
