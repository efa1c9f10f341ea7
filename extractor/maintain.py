"""Maintenance of sigs and hists, partition by partition (`cbm maintain ...`).

  clouded  delete the sigs rows of the parcel observations whose SCL histogram (hists.hist) holds only
           the given classes (the seed's rule: class 9, cloud high probability); counted first, then
           deleted in batches of a few obsids, one transaction each, so it can be stopped and run again
           (it resumes with what is left); hists is never touched (the cloud record stays)
  vacuum   VACUUM (ANALYZE) of every partition of sigs and hists, then ANALYZE of the parents
  cluster  rewrite the partitions in (pid, obsid) order, one at a time, each after a check that the
           server's disk can hold its copy; partitions already in order, and those of scenes still
           waiting for extraction, are skipped
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql

from extractor import partitions
from extractor.db import table
from extractor.errors import CbmError, UserError

DEFAULT_CLASSES = (9,)
BATCH_ROWS = 2_000_000   # sigs rows deleted per transaction (at most; whole obsids)
IN_ORDER = 0.9           # pid correlation (pg_stats) from which a partition counts as clustered
MAX_WASTE = 0.15         # share of a partition's pages not holding live rows from which it is rewritten,
MIN_WASTE_BYTES = 16e6   # if that is at least this much
WAITING = ("ingested", "inprogress")


def parse_classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        classes = ()
    if not classes or any(c < 0 or c > 255 for c in classes):
        raise UserError(f"--classes '{text}': give SCL classes (0-11) separated by commas, e.g. --classes 9 "
                        "or --classes 3,8,9,10")
    return classes


def _part(settings, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(name))


def _range(p: partitions.Partition) -> tuple[sql.Composable, list]:
    """A condition on h.obsid that selects the hists of the partition's obsid range (partition pruning)."""
    if p.default:
        return sql.SQL("true"), []
    conds, params = [], []
    if p.lo is not None:
        conds.append("h.obsid >= %s")
        params.append(p.lo)
    if p.hi is not None:
        conds.append("h.obsid < %s")
        params.append(p.hi)
    return sql.SQL(" AND ".join(conds) or "true"), params


CLOUDED = ("h.hist::text <> '{{}}' AND NOT EXISTS (SELECT 1 FROM json_object_keys(h.hist) k"
           " WHERE k <> ALL(%s::text[]))")


@dataclass
class Batch:
    partition: str
    obsids: list[int]
    rows: int


def clouded_plan(conn, settings, classes: tuple[int, ...], progress=lambda **kw: None) -> list[Batch]:
    """Count the sigs rows to delete, per partition and obsid; returns the delete batches."""
    keys = [str(c) for c in classes]
    batches = []
    with conn.cursor() as cur:
        parts = partitions.partitions(cur, settings, "sigs")
        progress(total=len(parts), completed=0)
        for i, p in enumerate(parts):
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_part(settings, p.name)))
            if not cur.fetchone()[0]:
                continue
            where, params = _range(p)
            cur.execute(sql.SQL(
                "SELECT s.obsid, count(*) FROM {part} s JOIN {hists} h ON h.pid = s.pid AND h.obsid = s.obsid"
                " WHERE {where} AND " + CLOUDED + " GROUP BY s.obsid ORDER BY s.obsid"
            ).format(part=_part(settings, p.name), hists=table(settings, "hists"), where=where), [*params, keys])
            current = Batch(p.name, [], 0)
            for obsid, n in cur.fetchall():
                if current.obsids and current.rows + n > BATCH_ROWS:
                    batches.append(current)
                    current = Batch(p.name, [], 0)
                current.obsids.append(obsid)
                current.rows += n
            if current.obsids:
                batches.append(current)
            progress(completed=i + 1, info=p.name)
    return batches


def delete_clouded(conn, settings, classes: tuple[int, ...], batches: list[Batch],
                   progress=lambda **kw: None) -> int:
    """Delete the batches of clouded_plan, one committed transaction each; returns the rows deleted."""
    keys = [str(c) for c in classes]
    done = 0
    progress(total=sum(b.rows for b in batches), completed=0)
    for b in batches:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "DELETE FROM {part} s USING {hists} h WHERE s.obsid = ANY(%s) AND h.obsid = ANY(%s)"
                " AND h.pid = s.pid AND h.obsid = s.obsid AND " + CLOUDED
            ).format(part=_part(settings, b.partition), hists=table(settings, "hists")), (b.obsids, b.obsids, keys))
            done += cur.rowcount
        conn.commit()
        progress(completed=done, info=b.partition)
    return done


def _all_partitions(cur, settings) -> list[tuple[str, partitions.Partition]]:
    out = []
    for key in partitions.KEYS:
        if partitions.relkind(cur, settings, partitions.base(settings, key)) != "p":
            raise UserError(f"table {partitions.base(settings, key)} has the old layout: run cbm db init first "
                            "(it upgrades it in place to the partitioned layout)")
        out += [(key, p) for p in partitions.partitions(cur, settings, key)]
    return out


def vacuum(conn, settings, progress=lambda **kw: None) -> list[tuple[str, float]]:
    """VACUUM (ANALYZE) every partition of sigs and hists, then ANALYZE the parents (autocommit)."""
    conn.autocommit = True
    done = []
    with conn.cursor() as cur:
        parts = _all_partitions(cur, settings)
        progress(total=len(parts) + 2, completed=0)
        for i, (_, p) in enumerate(parts):
            t0 = time.monotonic()
            cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(_part(settings, p.name)))
            done.append((p.name, time.monotonic() - t0))
            progress(completed=i + 1, info=p.name)
        for key in partitions.KEYS:
            t0 = time.monotonic()
            cur.execute(sql.SQL("ANALYZE {}").format(table(settings, key)))
            done.append((partitions.base(settings, key), time.monotonic() - t0))
        progress(completed=len(parts) + 2)
    return done


def free_disk(cur) -> int:
    """Bytes free on the database server's data disk, from `df` run by the server itself (COPY FROM
    PROGRAM: superuser or pg_execute_server_program, as the deployment's postgres role is)."""
    try:
        cur.execute("SELECT current_setting('data_directory')")
        where = cur.fetchone()[0]
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS cbm_df (line text)")
        cur.execute("TRUNCATE cbm_df")
        cur.execute(sql.SQL("COPY cbm_df FROM PROGRAM {}").format(sql.Literal(f"df -P -B1 {shlex.quote(where)}")))
        cur.execute("SELECT line FROM cbm_df")
        lines = [r[0] for r in cur.fetchall()]
        return int(lines[-1].split()[3])
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ExternalRoutineException,
            IndexError, ValueError) as exc:
        raise UserError("maintain cluster: cannot read the free disk space of the database server "
                        f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                        "the database role needs superuser or pg_execute_server_program: use the "
                        "deployment's (--deployment SPEC)") from None


@dataclass
class ClusterItem:
    partition: str
    index: str
    size: int            # table + indexes, bytes: what its rewrite needs free
    reason: str          # why it is rewritten, or why it is skipped
    rewrite: bool


def cluster_plan(conn, settings) -> list[ClusterItem]:
    """Per partition: rewrite it or not, and why (after an ANALYZE of those without statistics)."""
    conn.autocommit = True
    items = []
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id FROM {} WHERE status = ANY(%s)").format(table(settings, "catalogue")),
                    (list(WAITING),))
        waiting = [r[0] for r in cur.fetchall()]
        for key, p in _all_partitions(cur, settings):
            rel = _part(settings, p.name)
            cur.execute("SELECT ic.relname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid"
                        " JOIN pg_inherits i ON i.inhrelid = x.indexrelid"
                        " WHERE x.indrelid = %s::regclass AND i.inhparent = %s::regclass",
                        (rel.as_string(cur), sql.SQL("{}.{}").format(
                            sql.Identifier(settings.db.schema),
                            sql.Identifier(f"{partitions.base(settings, key)}_pid_obsid")).as_string(cur)))
            row = cur.fetchone()
            index = row[0] if row else None
            cur.execute("SELECT pg_total_relation_size(%s::regclass), pg_relation_size(%s::regclass),"
                        " (SELECT reltuples FROM pg_class WHERE oid = %s::regclass)",
                        (rel.as_string(cur),) * 3)
            size, heap, tuples = cur.fetchone()
            if heap == 0:
                continue
            if any((p.lo is None or o >= p.lo) and (p.hi is None or o < p.hi) for o in waiting) and not p.default:
                items.append(ClusterItem(p.name, index, size, "scenes of its obsids still wait for extraction", False))
                continue
            stats = _order_stats(cur, settings, p.name)
            if stats is None:
                cur.execute(sql.SQL("ANALYZE {}").format(rel))
                cur.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (rel.as_string(cur),))
                tuples = cur.fetchone()[0]
                stats = _order_stats(cur, settings, p.name)
            correlation, width = stats or (0.0, 0)
            waste = 1.0 - tuples * (width + 28) / heap if tuples > 0 else 1.0
            if correlation >= IN_ORDER and (waste < MAX_WASTE or waste * heap < MIN_WASTE_BYTES):
                items.append(ClusterItem(p.name, index, size, f"in order (pid correlation {correlation:.2f}, "
                                         f"{max(waste, 0):.0%} free space)", False))
            else:
                items.append(ClusterItem(p.name, index, size, f"pid correlation {correlation:.2f}, "
                                         f"{max(waste, 0):.0%} free space", True))
    return items


def _order_stats(cur, settings, name: str) -> tuple[float, int] | None:
    cur.execute("SELECT max(correlation) FILTER (WHERE attname = 'pid'), sum(avg_width) FROM pg_stats"
                " WHERE schemaname = %s AND tablename = %s", (settings.db.schema, name))
    correlation, width = cur.fetchone()
    return None if correlation is None else (abs(correlation), int(width))


def cluster(conn, settings, items: list[ClusterItem], progress=lambda **kw: None) -> list[tuple[str, float]]:
    """CLUSTER each partition to rewrite on its (pid, obsid) index, then ANALYZE it; before each one,
    the server must have the partition's size free (plus 10%)."""
    conn.autocommit = True
    todo = [i for i in items if i.rewrite]
    done = []
    progress(total=len(todo), completed=0)
    with conn.cursor() as cur:
        for n, item in enumerate(todo):
            if item.index is None:
                raise CbmError(f"maintain cluster: partition {item.partition} has no (pid, obsid) index; "
                               "run cbm db init")
            free = free_disk(cur)
            if free < item.size * 1.1:
                raise CbmError(f"maintain cluster: rewriting {item.partition} needs {item.size * 1.1 / 1e9:.1f} GB "
                               f"free on the database server, it has {free / 1e9:.1f} GB; {n} of {len(todo)} "
                               "partitions done: free disk space (or run cbm maintain clouded) and run it again")
            progress(completed=n, info=item.partition)
            t0 = time.monotonic()
            rel = _part(settings, item.partition)
            cur.execute(sql.SQL("CLUSTER {} USING {}").format(rel, sql.Identifier(item.index)))
            cur.execute(sql.SQL("ANALYZE {}").format(rel))
            done.append((item.partition, time.monotonic() - t0))
        progress(completed=len(todo))
    return done
