"""Sentinel-1 CARD on demand (`cbm order ...`): what to order, the orders placed, their states.

  plan      the inputs over an AOI and period (extractor/order_inputs.py), less those whose CARD
            product exists (in the CDSE catalog or dias_catalogue) and those already ordered
  place     batch orders of odp.batch_size inputs (extractor/odp.py), each recorded before it is
            sent and confirmed after, so a re-run never orders twice; a refusal (the quota) first
            halves the batch, then stops with what was ordered (OrderStopped)
  refresh   the state of the waiting orders, read back from the service
  cancel    cancel waiting orders
  report    counts by status, the oldest waiting, the failed with their messages, and what the
            completed orders became (in dias_catalogue after `cbm catalog sync`, extracted)

The table s1_orders holds one row per order of an input: input (the name the service gets),
product (the CARD product's name), card, workflow, batch_label (the batch order's Name, ours),
batch_id and order_id (the service's), status (submitting, queued, in_progress, completed, failed,
cancelled), message (the service's StatusMessage), timestamps. An input has at most one row that is
not failed or cancelled (a unique index); ordering it again (--retry-failed) adds a row.
A row left 'submitting' (a run that died while sending) is resolved by the next run: the service
is asked for a batch of that Name; it is adopted if there is one, else the row is dropped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from psycopg2 import sql

from extractor import catalog, db, odp
from extractor.db import table, table_exists
from extractor.errors import CbmError, UserError
from extractor.order_inputs import CARDS, Input, catalog_inputs, check_card, existing_products

TABLE = "s1_orders"
REORDERABLE = ("failed", "cancelled")
# what the service may still change: every status but these (the service may name more than
# queued and in_progress, e.g. a 'downloading' step); 'submitting' is ours, before the service has it
WAITING_SQL = sql.SQL("status NOT IN ('submitting', 'completed', 'failed', 'cancelled')")
KNOWN_WORKFLOWS = {"bs": "card_bs", "c12": "card_coh12_public"}
IN_DOUBT_AFTER = 600   # seconds before another run resolves a row left 'submitting'


def create_table(cur, settings) -> None:
    """The s1_orders table and its indexes (`cbm db init`, extractor/schema.py)."""
    t = table(settings, TABLE)
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " id serial PRIMARY KEY, input text NOT NULL, product text NOT NULL, card character varying(3) NOT NULL,"
        " workflow text NOT NULL, obstime timestamp without time zone NOT NULL, aoi text,"
        " batch_label text NOT NULL, batch_id text, order_id text,"
        " status character varying(24) NOT NULL DEFAULT 'submitting', message text,"
        " submitted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),"
        " completed_at timestamptz)").format(t))
    cur.execute(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (input, card)"
                        " WHERE status NOT IN ('failed', 'cancelled')").format(sql.Identifier(f"{TABLE}_active_idx"), t))
    cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (status, submitted_at)").format(
        sql.Identifier(f"{TABLE}_status_idx"), t))


def _latest(settings) -> sql.Composable:
    """The last order of each (input, card)."""
    return sql.SQL("(SELECT DISTINCT ON (input, card) * FROM {} ORDER BY input, card, id DESC)").format(
        table(settings, TABLE))


def _check_table(conn, settings) -> None:
    if not table_exists(conn, settings, TABLE):
        raise UserError(f"the {TABLE} table does not exist; run: cbm db init")


def status_of(value) -> str:
    """The service's status as stored: 'in progress' -> in_progress; 'done' -> completed."""
    s = "_".join(str(value or "queued").lower().split())
    return {"done": "completed", "canceled": "cancelled"}.get(s, s)[:24]


# -- plan --------------------------------------------------------------------------------------
@dataclass
class Plan:
    aoi: str
    card: str
    start: dt.date
    end: dt.date
    listed: int = 0                                   # products the catalog listed
    dropped: list[Input] = field(default_factory=list)   # the other timeliness of an acquisition
    existing: list[Input] = field(default_factory=list)  # the CARD product exists
    ordered: list[Input] = field(default_factory=list)   # an order exists (waiting, completed, or
    to_order: list[Input] = field(default_factory=list)  # failed/cancelled without --retry-failed)

    @property
    def found(self) -> int:
        return len(self.existing) + len(self.ordered) + len(self.to_order)


def plan(settings, aoi: str, start: str, end: str, card: str, retry_failed: bool = False) -> Plan:
    check_card(card)
    d0, d1 = catalog.parse_date(start, "START"), catalog.parse_date(end, "END")
    if d0 > d1:
        raise UserError(f"START {d0} is after END {d1}; swap them")
    p = Plan(aoi, card, d0, d1)
    with db.session(settings) as conn:
        wkt = catalog.aoi_geometry(conn, settings, aoi)
        _check_table(conn, settings)
        p.listed, kept, p.dropped = catalog_inputs(settings, wkt, d0, d1, card)
        names = [i.name for i in kept]
        existing = existing_products(conn, settings, wkt, d0, d1, card, [i.product(card) for i in kept])
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT input, status FROM {} o WHERE card = %s AND input = ANY(%s)").format(
                _latest(settings)), (card, names))
            last = dict(cur.fetchall())
    for i in kept:
        if i.product(card) in existing:
            p.existing.append(i)
        elif i.name in last and not (retry_failed and last[i.name] in REORDERABLE):
            p.ordered.append(i)
        else:
            p.to_order.append(i)
    return p


# -- place -------------------------------------------------------------------------------------
@dataclass
class Placed:
    ordered: int = 0
    batches: list[str] = field(default_factory=list)
    taken_elsewhere: int = 0     # another run ordered them meanwhile
    left: int = 0                # beyond --max


class OrderStopped(CbmError):
    """The service refused an order: `placed` inputs were ordered in this run, `left` were not."""

    def __init__(self, reason: str, placed: int, left: int):
        super().__init__(f"{reason}; {placed} ordered in this run, {left} not ordered")
        self.reason, self.placed, self.left = reason, placed, left


def pick_workflow(workflows: list[dict], card: str) -> str:
    """The workflow whose output is the card's product type (the documented name first)."""
    ptype = CARDS[card][1]
    names = [w.get("Name") for w in workflows
             if w.get("OutputProductType") == ptype or ptype in (w.get("OutputProductTypes") or [])]
    if not names:
        offered = ", ".join(f"{w.get('Name')} ({w.get('OutputProductType')})" for w in workflows) or "none"
        raise CbmError(f"the ODP service offers no workflow that makes {ptype} (it offers: {offered})")
    return KNOWN_WORKFLOWS.get(card) if KNOWN_WORKFLOWS.get(card) in names else names[0]


def place(settings, p: Plan, client: odp.Client, max_n: int | None = None, progress=None) -> Placed:
    """Order p.to_order (at most max_n) in batch orders; see the module docstring."""
    todo = p.to_order if max_n is None else p.to_order[:max_n]
    out = Placed(left=len(p.to_order) - len(todo))
    if not todo:
        return out
    workflow = pick_workflow(client.workflows(), p.card)
    size, pos = settings.odp.batch_size, 0
    while pos < len(todo):
        chunk = todo[pos:pos + size]
        label = f"cbm-{p.card}-{uuid.uuid4().hex[:16]}"
        taken = _reserve(settings, p, chunk, workflow, label)
        out.taken_elsewhere += len(chunk) - len(taken)
        if not taken:
            pos += len(chunk)
            continue
        names = [i.name for i in taken]
        try:
            try:
                batch = client.create_batch(label, workflow, names)
            except odp.InDoubt as exc:   # taken or not? the service knows the batch by its Name
                found = client.find_batches(label)
                if not found:
                    raise CbmError(f"{exc}, and the service lists no such order") from None
                batch = found[0]
        except odp.Refused as exc:
            _release(settings, label)
            if len(chunk) > 1:      # a smaller batch may fit in what is left of the quota
                size = max(1, len(chunk) // 2)
                continue
            raise OrderStopped(f"the ODP service refused the order ({exc})", out.ordered,
                               len(p.to_order) - out.ordered) from None
        except CbmError as exc:
            _release(settings, label)
            raise OrderStopped(str(exc), out.ordered, len(p.to_order) - out.ordered) from None
        _confirm(settings, label, batch)
        out.ordered += len(taken)
        out.batches.append(str(batch.get("Id")))
        pos += len(chunk)
        if progress:
            progress(out.ordered, len(todo))
    return out


def _reserve(settings, p: Plan, chunk: list[Input], workflow: str, label: str) -> list[Input]:
    """Record the orders about to be sent (status 'submitting'); those another run holds are left out."""
    insert = sql.SQL(
        "INSERT INTO {} (input, product, card, workflow, obstime, aoi, batch_label) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (input, card) WHERE status NOT IN ('failed', 'cancelled') DO NOTHING RETURNING id"
    ).format(table(settings, TABLE))
    taken = []
    with db.session(settings) as conn, conn.cursor() as cur:
        for i in chunk:
            cur.execute(insert, (i.name, i.product(p.card), p.card, workflow, i.obstime, p.aoi, label))
            if cur.fetchone():
                taken.append(i)
    return taken


def _release(settings, label: str) -> None:
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE batch_label = %s AND batch_id IS NULL").format(
            table(settings, TABLE)), (label,))


def _confirm(settings, label: str, batch: dict) -> None:
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET batch_id = %s, status = %s, updated_at = now()"
                            " WHERE batch_label = %s AND batch_id IS NULL").format(table(settings, TABLE)),
                    (str(batch.get("Id")), status_of(batch.get("Status")), label))


def resolve_in_doubt(settings, client: odp.Client, older_than: float = IN_DOUBT_AFTER) -> tuple[int, int]:
    """Rows left 'submitting' by a run that died: (adopted, dropped)."""
    adopted = dropped = 0
    with db.session(settings) as conn, conn.cursor() as cur:
        _check_table(conn, settings)
        cur.execute(sql.SQL("SELECT DISTINCT batch_label FROM {} WHERE status = 'submitting'"
                            " AND updated_at < now() - make_interval(secs => %s)").format(table(settings, TABLE)),
                    (older_than,))
        labels = [r[0] for r in cur.fetchall()]
    for label in labels:
        found = client.find_batches(label)
        if found:
            _confirm(settings, label, found[0])
            adopted += 1
        else:
            _release(settings, label)
            dropped += 1
    return adopted, dropped


# -- refresh and cancel ------------------------------------------------------------------------
def refresh(settings, client: odp.Client) -> dict[str, int]:
    """Read the waiting orders' states from the service; returns {new status: orders that moved}."""
    moved: dict[str, int] = {}
    with db.session(settings) as conn, conn.cursor() as cur:
        _check_table(conn, settings)
        cur.execute(sql.SQL("SELECT batch_id, id, input, status FROM {} o WHERE {} AND batch_id IS NOT NULL"
                            " ORDER BY batch_id").format(_latest(settings), WAITING_SQL))
        rows = cur.fetchall()
    batches: dict[str, list] = {}
    for batch_id, *row in rows:
        batches.setdefault(batch_id, []).append(row)
    for batch_id, members in batches.items():
        updates = []
        try:
            items = client.batch_items(batch_id)
        except odp.NotFound:
            items, batch_status = [], "failed"
        else:
            batch_status = None
        by_input = {(it.get("InputProductReference") or {}).get("Reference") or it.get("Name"): it for it in items}
        for oid, name, status in members:
            it = by_input.get(name)
            if it is not None:
                updates.append((oid, status, status_of(it.get("Status")), it.get("StatusMessage"), it.get("Id")))
                continue
            if batch_status is None:
                batch_status = status_of(client.batch(batch_id).get("Status"))
            if batch_status in REORDERABLE:
                updates.append((oid, status, batch_status, f"batch order {batch_id} is {batch_status}", None))
        _update(settings, updates, moved)
    return moved


def _update(settings, updates: list[tuple], moved: dict[str, int]) -> None:
    stmt = sql.SQL(
        "UPDATE {} SET status = %s, message = %s, order_id = coalesce(%s, order_id), updated_at = now(),"
        " completed_at = CASE WHEN %s = 'completed' THEN coalesce(completed_at, now()) END WHERE id = %s"
    ).format(table(settings, TABLE))
    with db.session(settings) as conn, conn.cursor() as cur:
        for oid, old, new, message, order_id in updates:
            cur.execute(stmt, (new, message, None if order_id is None else str(order_id), new, oid))
            if new != old:
                moved[new] = moved.get(new, 0) + 1


def cancel(settings, client: odp.Client, names: list[str], card: str | None) -> dict[str, int]:
    """Cancel the waiting orders of these inputs (all waiting ones when `names` is empty). Returns the
    counts: asked, cancelled, running (in production: they complete), unknown (no order id from the
    service yet), not waiting (named inputs without a waiting order)."""
    refresh(settings, client)
    where = WAITING_SQL + (sql.SQL(" AND card = %s") if card else sql.SQL(""))
    params: list = [card] if card else []
    if names:
        where += sql.SQL(" AND input = ANY(%s)")
        params.append(names)
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id, input, order_id FROM {} o WHERE ").format(_latest(settings)) + where, params)
        rows = cur.fetchall()
    out = {"asked": len(rows), "unknown": 0, "not waiting": len(set(names) - {r[1] for r in rows})}
    for _, _, order_id in rows:
        if order_id is None:
            out["unknown"] += 1
            continue
        client.cancel(order_id)
    refresh(settings, client)
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status <>"
                            " 'cancelled' AND order_id IS NOT NULL) FROM {} WHERE id = ANY(%s)").format(
            table(settings, TABLE)), ([r[0] for r in rows],))
        out["cancelled"], out["running"] = cur.fetchone()
    return out


# -- report ------------------------------------------------------------------------------------
@dataclass
class Report:
    counts: list[tuple]        # (card, status, orders)
    waiting: list[tuple]       # the oldest: (input, card, status, submitted_at, message)
    failed: list[tuple]        # the latest: (input, card, updated_at, message)
    completed: list[tuple]     # (card, aoi, completed, in dias_catalogue, extracted, first, last not synced)


def report(settings, limit: int = 10) -> Report:
    latest = _latest(settings)
    with db.session(settings) as conn, conn.cursor() as cur:
        _check_table(conn, settings)
        cur.execute(sql.SQL("SELECT card, status, count(*) FROM {} o GROUP BY 1, 2 ORDER BY 1, 2").format(latest))
        counts = cur.fetchall()
        cur.execute(sql.SQL("SELECT input, card, status, submitted_at, message FROM {} o"
                            " WHERE status NOT IN ('completed', 'failed', 'cancelled') ORDER BY submitted_at, id LIMIT %s"
                            ).format(latest), (limit,))
        waiting = cur.fetchall()
        cur.execute(sql.SQL("SELECT input, card, updated_at, message FROM {} o WHERE status = 'failed'"
                            " ORDER BY updated_at DESC, id DESC LIMIT %s").format(latest), (limit,))
        failed = cur.fetchall()
        cur.execute(sql.SQL(
            "SELECT o.card, o.aoi, count(*), count(c.id), count(*) FILTER (WHERE c.status = 'extracted'),"
            " min(o.obstime) FILTER (WHERE c.id IS NULL), max(o.obstime) FILTER (WHERE c.id IS NULL)"
            " FROM {} o LEFT JOIN {} c ON c.reference = o.product WHERE o.status = 'completed'"
            " GROUP BY 1, 2 ORDER BY 1, 2").format(latest, table(settings, "catalogue")))
        completed = cur.fetchall()
    return Report(counts, waiting, failed, completed)
