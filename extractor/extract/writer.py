"""COPY of a scene's results into sigs (binary COPY) and hists (text COPY).

The caller runs these in the same transaction as the run's status change (claims.finish), so a
scene's rows appear all at once with its status, or not at all.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import sys

import numpy as np
from numba import njit
from psycopg2 import sql

from extractor.db import table

SIGS_COLUMNS = ("pid", "obsid", "band", "count", "mean", "std", "min", "max", "p25", "p50", "p75")
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_copy():
    """psycopg2 prints (PyErr_Print) the server's error when a connection dies inside COPY FROM;
    the worker reports that loss itself, on one line, so the printout goes to the debug log."""
    previous = sys.excepthook
    sys.excepthook = lambda *exc: log.debug("during COPY", exc_info=exc)
    try:
        yield
    finally:
        sys.excepthook = previous


def sigs_records(obsid: int, pids: np.ndarray, code: str, stats: np.ndarray) -> bytes:
    """Binary COPY tuples for one band: rows for parcels with at least one valid pixel."""
    keep = stats[:, 0] > 0
    n = int(keep.sum())
    band = code.encode("ascii")
    fields = [("nf", ">i2"), ("l_pid", ">i4"), ("pid", ">i4"), ("l_obs", ">i4"), ("obsid", ">i4"),
              ("l_band", ">i4"), ("band", f"S{len(band)}")]
    for name in SIGS_COLUMNS[3:]:
        fields += [(f"l_{name}", ">i4"), (name, ">f4")]
    rec = np.empty(n, dtype=np.dtype(fields))
    rec["nf"] = len(SIGS_COLUMNS)
    rec["l_pid"] = rec["l_obs"] = 4
    rec["pid"] = pids[keep]
    rec["obsid"] = obsid
    rec["l_band"] = len(band)
    rec["band"] = band
    sel = stats[keep]
    for j, name in enumerate(SIGS_COLUMNS[3:]):
        rec[f"l_{name}"] = 4
        rec[name] = sel[:, j]
    return rec.tobytes()


def copy_sigs(cur, settings, obsid: int, pids: np.ndarray, bands: list[tuple[str, np.ndarray]]) -> int:
    """COPY the rows of every (band code, stats) pair; returns the number of rows.
    Rows go in pid order (the bands of a parcel together): the pid index is updated in one
    sweep, and the table grows in the order the seed's maintenance clusters it."""
    parts, keys = [], []
    for code, stats in bands:
        parts.append(np.frombuffer(sigs_records(obsid, pids, code, stats), dtype=np.uint8))
        keys.append(pids[stats[:, 0] > 0])
    rows = sum(k.size for k in keys)
    body = np.concatenate(parts) if parts else np.empty(0, np.uint8)
    if rows and len(bands) > 1 and len({len(code) for code, _ in bands}) == 1:  # equal record sizes
        order = np.argsort(np.concatenate(keys), kind="stable")
        body = body.reshape(rows, -1)[order].reshape(-1)
    buf = io.BytesIO(_HEADER + body.tobytes() + _TRAILER)
    with _quiet_copy():
        cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(
            table(settings, "sigs"), sql.SQL(", ").join(map(sql.Identifier, SIGS_COLUMNS))), buf)
    return rows


def hist_json(counts: np.ndarray) -> str:
    """{"4": 120, "5": 3}: the seed's hist format, classes with pixels only (what _hists_text writes)."""
    nz = np.flatnonzero(counts)
    return "{" + ", ".join(f'"{c}": {counts[c]}' for c in nz) + "}"


@njit(cache=True)
def _digits(buf, pos, value):
    if value < 0:
        buf[pos] = 45  # -
        pos += 1
        value = -value
    if value == 0:
        buf[pos] = 48
        return pos + 1
    n = 0
    v = value
    while v > 0:
        n += 1
        v //= 10
    for i in range(n - 1, -1, -1):
        buf[pos + i] = 48 + value % 10
        value //= 10
    return pos + n


@njit(cache=True)
def _hists_text(pids, obsid, counts):
    """COPY text lines 'pid<TAB>obsid<TAB>{"c": n, ...}' for parcels with pixels (as hist_json)."""
    size = 0
    for p in range(counts.shape[0]):
        size += 50
        for c in range(counts.shape[1]):
            if counts[p, c] > 0:
                size += 30
    buf = np.empty(size, np.uint8)
    pos = 0
    rows = 0
    for p in range(counts.shape[0]):
        first = True
        for c in range(counts.shape[1]):
            n = counts[p, c]
            if n == 0:
                continue
            if first:
                pos = _digits(buf, pos, pids[p])
                buf[pos] = 9
                pos = _digits(buf, pos + 1, obsid)
                buf[pos] = 9
                buf[pos + 1] = 123  # {
                pos += 2
                first = False
            else:
                buf[pos] = 44  # ,
                buf[pos + 1] = 32
                pos += 2
            buf[pos] = 34  # "
            pos = _digits(buf, pos + 1, c)
            buf[pos] = 34
            buf[pos + 1] = 58  # :
            buf[pos + 2] = 32
            pos = _digits(buf, pos + 3, n)
        if not first:
            buf[pos] = 125  # }
            buf[pos + 1] = 10
            pos += 2
            rows += 1
    return buf[:pos], rows


def copy_hists(cur, settings, obsid: int, pids: np.ndarray, counts: np.ndarray) -> int:
    """COPY one hists row per parcel with at least one valid pixel; returns the number of rows."""
    text, rows = _hists_text(pids.astype(np.int64), int(obsid), counts)
    with _quiet_copy():
        cur.copy_expert(sql.SQL("COPY {} (pid, obsid, hist) FROM STDIN").format(table(settings, "hists")),
                        io.BytesIO(text.tobytes()))
    return int(rows)
