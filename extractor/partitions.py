"""sigs and hists as tables partitioned by obsid range, their partitions, and the in-place upgrade of
a database made with the seed's plain tables (chosen from `./run bench db`; see docs/extraction.md,
"Database layout").

  sigs, hists        PARTITION BY RANGE (obsid): obsid is dias_catalogue.id, so a partition holds
                     WIDTH consecutive catalogue rows, i.e. a stretch of the season
  <name>_obsid_<lo>  the partition of obsids lo .. lo+WIDTH-1, with the (pid, obsid) index of the
                     parent (<name>_pid_obsid): one parcel's season is one index probe per partition
  <name>_default     the safety net: rows of an obsid no partition covers yet (a catalogue row added
                     by another tool); ensure_partitions moves them into their partition
  <name>_legacy      a table of the old layout, attached in place as the partition of obsids < its bound

Partitions are made by the controller (`cbm db init`, `cbm catalog sync`) ahead of the catalogue's ids,
never by the workers: they COPY into the parent and need no CREATE privilege. A partition is created
as a table and then attached (SHARE UPDATE EXCLUSIVE on the parent), so running COPYs and reads go on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from extractor.db import table
from extractor.errors import CbmError, UserError, one_line

# Catalogue ids per partition: sized so that a partition holds about PARTITION_ROWS sigs rows, from the
# sigs rows per extracted catalogue id seen so far; WIDTH before anything is extracted (the bench: 100
# ids hold ~2*10^7 rows for 120k parcels). A partition's (pid, obsid) index then stays in the server's
# memory while the season's scenes are written into it (`./run bench db`).
WIDTH = 100
PARTITION_ROWS = 20_000_000
MIN_WIDTH, MAX_WIDTH = 10, 10_000
AHEAD = 1     # widths of ids ready beyond the newest catalogue id
KEYS = ("sigs", "hists")
COLUMNS = {
    "sigs": "pid integer, obsid integer, band character(3), count real, mean real, std real,"
            " min real, max real, p25 real, p50 real, p75 real",
    "hists": "pid integer, obsid integer, hist json",
}
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}
LOCK_TIMEOUT = "10s"  # the short ACCESS EXCLUSIVE steps give up instead of queueing the workers behind them
# Rates for the dry-run's estimates, measured on a busy 2-vCPU machine (a 20-million-row, 1.5 GB seed
# sigs: the index in 46 s, the validation in 9 s): a slow server's figures, so the estimates err long.
INDEX_BYTES_PER_S = 33e6    # CREATE INDEX CONCURRENTLY (pid, obsid), per byte of table
SCAN_BYTES_PER_S = 175e6    # VALIDATE CONSTRAINT: one sequential scan


@dataclass
class Partition:
    name: str
    lo: int | None      # None: MINVALUE (the legacy partition) or the default partition
    hi: int | None
    default: bool = False


@dataclass
class Step:
    key: str            # sigs | hists
    what: str           # what it does, for the dry-run and the progress line
    lock: str           # the lock it takes and what it blocks
    seconds: float      # estimate
    run: object = field(repr=False, default=None)   # run(conn) does it (autocommit connection)


def base(settings, key: str) -> str:
    name = getattr(settings.tables, key)
    if len(name) > 40:
        raise UserError(f"settings tables.{key} '{name}' is longer than 40 characters; its partitions "
                        "(<name>_obsid_<n>) would exceed PostgreSQL's 63; use a shorter name")
    return name


def _rel(settings, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(name))


def relkind(cur, settings, name: str) -> str | None:
    """'r' a plain table, 'p' a partitioned one, None when missing."""
    cur.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s", (settings.db.schema, name))
    row = cur.fetchone()
    return row[0] if row else None


def create_parent(cur, settings, key: str) -> None:
    name = base(settings, key)
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}) PARTITION BY RANGE (obsid)").format(
        table(settings, key), sql.SQL(COLUMNS[key])))
    cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (pid, obsid)").format(
        sql.Identifier(f"{name}_pid_obsid"), table(settings, key)))


_BOUND = re.compile(r"FROM \((MINVALUE|-?\d+)\) TO \((MAXVALUE|-?\d+)\)")


def partitions(cur, settings, key: str) -> list[Partition]:
    """The partitions of sigs or hists, in obsid order (the default partition last)."""
    cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
                (table(settings, key).as_string(cur),))
    out = []
    for relname, bound in cur.fetchall():
        if bound == "DEFAULT":
            out.append(Partition(relname, None, None, default=True))
            continue
        m = _BOUND.search(bound)
        lo = None if m.group(1) == "MINVALUE" else int(m.group(1))
        hi = None if m.group(2) == "MAXVALUE" else int(m.group(2))
        out.append(Partition(relname, lo, hi))
    return sorted(out, key=lambda p: (p.default, -1 if p.lo is None else p.lo))


def _top_id(cur, settings) -> int:
    cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(table(settings, "catalogue")))
    return cur.fetchone()[0]


def _attach(cur, settings, key: str, part: str, bound: tuple[int, int] | None, default: str | None) -> None:
    """Create `part` as a table like the parent, move the default partition's rows of its range into
    it, attach it (the parent's index is built on it; SHARE UPDATE EXCLUSIVE on the parent)."""
    parent = table(settings, key)
    cur.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(_rel(settings, part), parent))
    if default is not None and bound is not None:
        lo, hi = bound
        cur.execute(sql.SQL("WITH moved AS (DELETE FROM {d} WHERE obsid >= %s AND obsid < %s RETURNING *)"
                            " INSERT INTO {p} SELECT * FROM moved").format(d=_rel(settings, default),
                                                                            p=_rel(settings, part)), (lo, hi))
    spec = (sql.SQL("DEFAULT") if bound is None
            else sql.SQL("FOR VALUES FROM ({}) TO ({})").format(sql.Literal(bound[0]), sql.Literal(bound[1])))
    cur.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent, _rel(settings, part), spec))


def next_width(cur, settings) -> int:
    """Catalogue ids per new partition: PARTITION_ROWS over the sigs rows per extracted catalogue id in
    the partitions written so far (the planner's row counts, kept by autovacuum), WIDTH before any."""
    if relkind(cur, settings, base(settings, "sigs")) != "p":
        return WIDTH
    rows = ids = 0
    for p in partitions(cur, settings, "sigs"):
        if p.default or p.hi is None:
            continue
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    (_rel(settings, p.name).as_string(cur),))
        tuples = cur.fetchone()[0]
        if tuples <= 0:     # empty, or never analyzed (-1)
            continue
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE status = 'extracted' AND id >= %s AND id < %s").format(
            table(settings, "catalogue")), (-(2**31) if p.lo is None else p.lo, p.hi))
        rows, ids = rows + tuples, ids + cur.fetchone()[0]
    if not rows or not ids:
        return WIDTH
    return max(MIN_WIDTH, min(MAX_WIDTH, int(PARTITION_ROWS * ids / rows)))


def ensure_partitions(cur, settings, top: int | None = None) -> list[str]:
    """Partitions of sigs and hists covering every catalogue id and AHEAD more, plus the default
    partition; returns the names created. New partitions are next_width() ids wide, after the highest
    existing one. Tables of the old layout (not yet upgraded) are left alone."""
    top = _top_id(cur, settings) if top is None else top
    width = next_width(cur, settings)
    created = []
    for key in KEYS:
        name = base(settings, key)
        if relkind(cur, settings, name) != "p":
            continue
        # one creator at a time (two catalog syncs); COPY and reads are not blocked by this mode
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(table(settings, key)))
        parts = partitions(cur, settings, key)
        default = next((p.name for p in parts if p.default), None)
        ranges = [(p.lo, p.hi) for p in parts if not p.default]
        if any(hi is None for _, hi in ranges):   # a partition up to MAXVALUE (made by hand) covers the rest
            continue
        lo = max((hi for _, hi in ranges), default=0)
        while lo <= top + AHEAD * width:
            part = f"{name}_obsid_{lo}"
            _attach(cur, settings, key, part, (lo, lo + width), default)
            created.append(part)
            lo += width
        if default is None:
            _attach(cur, settings, key, f"{name}_default", None, None)
            created.append(f"{name}_default")
    return created


# -- the upgrade of a plain (seed-layout) table ------------------------------------------------------

def _size(cur, settings, name: str) -> tuple[int, int]:
    cur.execute("SELECT pg_relation_size(c.oid), greatest(c.reltuples, 0)::bigint FROM pg_class c"
                " WHERE c.oid = %s::regclass", (_rel(settings, name).as_string(cur),))
    return cur.fetchone()


def _dependent_views(cur, settings, name: str) -> list[str]:
    """Views and materialized views whose query reads the table."""
    cur.execute("SELECT DISTINCT v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
                " JOIN pg_class v ON v.oid = r.ev_class WHERE d.classid = 'pg_rewrite'::regclass"
                " AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass AND v.oid <> d.refobjid"
                " ORDER BY 1", (_rel(settings, name).as_string(cur),))
    return [r[0] for r in cur.fetchall()]


def _index_state(cur, settings, index: str) -> bool | None:
    """True: the index is valid; False: left invalid by an interrupted build; None: missing."""
    cur.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (settings.db.schema, index))
    row = cur.fetchone()
    return row[0] if row else None


def _check_state(cur, settings, name: str, constraint: str) -> tuple[int, bool] | None:
    """(bound, validated) of the legacy CHECK constraint, None when missing."""
    cur.execute("SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND conname = %s", (_rel(settings, name).as_string(cur), constraint))
    row = cur.fetchone()
    if not row:
        return None
    return int(re.search(r"obsid < (\d+)", row[0]).group(1)), row[1]


def plan(cur, settings) -> list[Step]:
    """The steps that turn plain sigs/hists tables into partitioned ones (none when already done).

    Per table: build the (pid, obsid) index concurrently, add CHECK (obsid IS NOT NULL AND obsid < bound)
    NOT VALID and validate it (reads and COPY go on), then one short transaction renames the table to
    <name>_legacy, creates the partitioned table under the old name and attaches the legacy table as
    the partition of obsids < bound (no scan: the validated constraint proves it), drops the old
    single-column indexes and copies the table's grants. Every step is skipped when already done, so an
    interrupted upgrade resumes where it stopped."""
    steps = []
    for key in KEYS:
        name = base(settings, key)
        if relkind(cur, settings, name) != "r":
            continue
        if relkind(cur, settings, f"{name}_legacy") is not None:
            raise UserError(f"cannot upgrade table {name}: a table {name}_legacy already exists; rename or drop it")
        views = _dependent_views(cur, settings, name)
        if views:   # they are bound to the table, not its name: after the swap they would read the legacy rows only
            raise UserError(f"cannot upgrade table {name}: view(s) {', '.join(views)} read it and would then see only "
                            f"the rows written before the upgrade; save their definitions, drop them, run cbm db "
                            f"init again, then re-create them")
        nbytes, nrows = _size(cur, settings, name)
        rel = _rel(settings, name)
        index, check = f"{name}_legacy_pid_obsid", f"{name}_legacy_obsid"
        state = _index_state(cur, settings, index)
        if state is not True:
            stmts = ([sql.SQL("DROP INDEX CONCURRENTLY {}").format(_rel(settings, index))] if state is False else [])
            stmts.append(sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} (pid, obsid)").format(sql.Identifier(index), rel))
            steps.append(Step(key, f"build index {index} on {name} (~{nrows:,} rows, {nbytes / 1e9:.1f} GB)",
                              "SHARE UPDATE EXCLUSIVE on " + name + ": reads and COPY go on",
                              nbytes / INDEX_BYTES_PER_S, _runner(stmts)))
        found = _check_state(cur, settings, name, check)
        if found is None:
            cur.execute(sql.SQL("SELECT greatest(coalesce(max(obsid), 0), (SELECT coalesce(max(id), 0) FROM {}))"
                                " FROM {}").format(table(settings, "catalogue"), rel))
            bound = (cur.fetchone()[0] // WIDTH + 1 + AHEAD) * WIDTH
            steps.append(Step(key, f"add CHECK (obsid IS NOT NULL AND obsid < {bound}) NOT VALID to {name}",
                              f"ACCESS EXCLUSIVE on {name}: an instant, waits for running transactions",
                              0.0, _runner([sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)),
                                            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (obsid IS NOT NULL AND"
                                                    " obsid < {}) NOT VALID").format(rel, sql.Identifier(check),
                                                                                     sql.Literal(bound))])))
            validated = False
        else:
            bound, validated = found
        if not validated:
            steps.append(Step(key, f"validate that CHECK on {name} (one scan of {nbytes / 1e9:.1f} GB)",
                              f"SHARE UPDATE EXCLUSIVE on {name}: reads and COPY go on",
                              nbytes / SCAN_BYTES_PER_S, _runner([sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}")
                                                                  .format(rel, sql.Identifier(check))])))
        steps.append(Step(key, f"rename {name} to {name}_legacy, create the partitioned {name}, attach "
                          f"{name}_legacy for obsid < {bound}, drop its single-column indexes",
                          f"ACCESS EXCLUSIVE on {name}: under a second, waits for running transactions "
                          f"(gives up after {LOCK_TIMEOUT}: run it again)", 1.0,
                          lambda conn, key=key, bound=bound: _swap(conn, settings, key, bound)))
    return steps


def _runner(statements):
    def run(conn):
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
    return run


def _swap(conn, settings, key: str, bound: int) -> None:
    """One transaction: the plain table becomes the legacy partition of the new partitioned table."""
    name = base(settings, key)
    legacy = f"{name}_legacy"
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table(settings, key), sql.Identifier(legacy)))
            # the seed's single-column indexes (pid), (obsid), (band): the (pid, obsid) index replaces them
            cur.execute("SELECT ci.relname FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid"
                        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                        " WHERE i.indrelid = %s::regclass AND i.indnatts = 1 AND i.indexprs IS NULL"
                        " AND i.indpred IS NULL AND a.attname IN ('pid', 'obsid', 'band')",
                        (_rel(settings, legacy).as_string(cur),))
            for (index,) in cur.fetchall():
                cur.execute(sql.SQL("DROP INDEX {}").format(_rel(settings, index)))
            create_parent(cur, settings, key)
            cur.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (MINVALUE) TO ({})").format(
                table(settings, key), _rel(settings, legacy), sql.Literal(bound)))
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                _rel(settings, legacy), sql.Identifier(f"{name}_legacy_obsid")))
            # whoever could read or write the old table can do the same with the new one
            cur.execute("SELECT r.rolname, a.privilege_type FROM pg_class c CROSS JOIN aclexplode(c.relacl) a"
                        " LEFT JOIN pg_roles r ON r.oid = a.grantee"
                        " WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
                        (_rel(settings, legacy).as_string(cur),))
            for role, privilege in cur.fetchall():
                if privilege not in _PRIVILEGES:
                    continue
                cur.execute(sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privilege), table(settings, key),
                    sql.SQL("PUBLIC") if role is None else sql.Identifier(role)))
            ensure_partitions(cur, settings)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True


def upgrade(conn, settings, report=print) -> int:
    """Run the steps of plan() on an autocommit connection, each reported before and after; returns
    the number of steps run."""
    conn.autocommit = True
    with conn.cursor() as cur:
        steps = plan(cur, settings)
    for i, step in enumerate(steps, 1):
        report(f"upgrade {i}/{len(steps)}: {step.what} ...")
        t0 = time.monotonic()
        try:
            step.run(conn)
        except psycopg2.errors.LockNotAvailable:
            raise CbmError(f"upgrade of {step.key}: the table stayed busy for {LOCK_TIMEOUT} (a long transaction "
                           "holds it); nothing of this step was done: run cbm db init again") from None
        except psycopg2.OperationalError as exc:
            raise CbmError(f"upgrade of {step.key}: lost the database ({one_line(exc)}); the steps done are kept: "
                           "run cbm db init again to resume") from None
        except psycopg2.errors.CheckViolation:
            raise UserError(f"upgrade of {step.key}: some rows have no obsid (NULL) and fit no partition: "
                            f"delete them (DELETE FROM {getattr(settings.tables, step.key)} WHERE obsid IS NULL) "
                            "and run cbm db init again") from None
        except psycopg2.Error as exc:
            raise CbmError(f"upgrade of {step.key}: {step.what} failed: {one_line(exc)}; the steps before it "
                           "are kept: fix that and run cbm db init again") from None
        report(f"upgrade {i}/{len(steps)}: done in {time.monotonic() - t0:.1f} s")
    return len(steps)


def describe(steps: list[Step]) -> list[str]:
    """Lines for `cbm db init --dry-run`."""
    if not steps:
        return ["sigs and hists are partitioned already: nothing to upgrade"]
    total = sum(s.seconds for s in steps)
    lines = [f"upgrade of sigs/hists to the partitioned layout: {len(steps)} steps, about {_dur(total)}"]
    for i, s in enumerate(steps, 1):
        lines.append(f"  {i}. {s.what}")
        lines.append(f"     lock: {s.lock}; about {_dur(s.seconds)}")
    return lines


def _dur(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
