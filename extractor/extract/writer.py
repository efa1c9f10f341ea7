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
    """COPY the rows of every (band code, stats) pair; returns the number of rows."""
    buf = io.BytesIO()
    buf.write(_HEADER)
    rows = 0
    for code, stats in bands:
        buf.write(sigs_records(obsid, pids, code, stats))
        rows += int((stats[:, 0] > 0).sum())
    buf.write(_TRAILER)
    buf.seek(0)
    with _quiet_copy():
        cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(
            table(settings, "sigs"), sql.SQL(", ").join(map(sql.Identifier, SIGS_COLUMNS))), buf)
    return rows


def hist_json(counts: np.ndarray) -> str:
    """{"4": 120, "5": 3}: the seed's hist format, classes with pixels only."""
    nz = np.flatnonzero(counts)
    return "{" + ", ".join(f'"{c}": {counts[c]}' for c in nz) + "}"


def copy_hists(cur, settings, obsid: int, pids: np.ndarray, counts: np.ndarray) -> int:
    """COPY one hists row per parcel with at least one valid pixel; returns the number of rows."""
    has = counts.sum(axis=1) > 0
    lines = [f"{pid}\t{obsid}\t{hist_json(row)}\n" for pid, row in zip(pids[has].tolist(), counts[has])]
    buf = io.StringIO("".join(lines))
    with _quiet_copy():
        cur.copy_expert(sql.SQL("COPY {} (pid, obsid, hist) FROM STDIN").format(table(settings, "hists")), buf)
    return len(lines)
