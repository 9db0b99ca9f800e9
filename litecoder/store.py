"""The run store: one SQLite file per run that every stage reads from and writes through.

Each stage's items live under ``(stage, key)`` with one state: ``done`` (with an outcome
such as ``ok``, ``accepted``, ``rejected``, ``duplicate``) or ``failed`` (with the error); an
item with no row is not started. SQLite in WAL mode commits each batch atomically, so a
SIGKILL at any moment leaves the file consistent, and a re-run skips what is done. Parquet
files in the run directory are views rebuilt from here (atomically) after each stage.

Each record carries the hash of the stage config that produced it. When the config changes,
the stage's older records are stale: they are moved to ``stale_items`` and redone, while
other stages keep theirs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

DONE, FAILED = "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    outcome TEXT,
    reason TEXT,
    record TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stage, key)
);
-- each put asks for the stage's last seq, and views read a stage in seq order: both by index,
-- so that a write costs the same at the 100,000th item as at the first
CREATE INDEX IF NOT EXISTS items_by_seq ON items (stage, seq);
CREATE TABLE IF NOT EXISTS stale_items AS SELECT * FROM items WHERE 0;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def config_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def json_field(field: str, column: str = "record") -> str:
    """SQL for one top-level field of a JSON record, typed as JSON (``json_extract`` alone
    turns true/false into 1/0); works on SQLite 3.37, which lacks the ``->`` operator."""
    path = f"'$.{field}'"
    return (f"CASE json_type({column}, {path}) WHEN 'true' THEN json('true') WHEN 'false' THEN json('false') "
            f"ELSE json_extract({column}, {path}) END")


@dataclass(frozen=True)
class Item:
    stage: str
    key: str
    state: str
    outcome: str | None
    reason: str | None
    record: dict


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._hashes: dict[str, str] = {}

    def close(self) -> None:
        self._db.close()

    # -- stage configs ---------------------------------------------------------------------
    def begin_stage(self, stage: str, config: dict) -> int:
        """Record the stage's config; returns how many earlier records became stale."""
        digest = config_hash(config)
        self._hashes[stage] = digest
        with self._transaction():
            stale = self._db.execute(
                "SELECT COUNT(*) FROM items WHERE stage = ? AND config_hash != ?", (stage, digest)
            ).fetchone()[0]
            if stale:
                self._db.execute("INSERT INTO stale_items SELECT * FROM items WHERE stage = ? AND config_hash != ?", (stage, digest))
                self._db.execute("DELETE FROM items WHERE stage = ? AND config_hash != ?", (stage, digest))
            self._set_meta(f"config:{stage}", json.dumps(config, sort_keys=True, default=str))
        return stale

    def open_stage(self, stage: str, config: dict, inputs: set[str] | None, *, retry_failed: bool) -> tuple[set[str], int]:
        """Start a stage (or resume it): record its config, retire records made with another
        config or for inputs that are gone (``inputs=None`` keeps all keys), and return the keys
        that need no work (done, and failed too unless ``retry_failed``) with the retired count."""
        stale = self.begin_stage(stage, config)
        if inputs is not None:
            stale += self.retire(stage, inputs)
        skip = {DONE} if retry_failed else {DONE, FAILED}
        return {key for key, state in self.states(stage).items() if state in skip}, stale

    def stage_started(self, stage: str) -> bool:
        """Whether the stage ever ran in this run (even if it produced no items)."""
        return self.get_meta(f"config:{stage}") is not None

    def retire(self, stage: str, keep: set[str]) -> int:
        """Move the stage's records whose key is not in ``keep`` to ``stale_items``."""
        keys = [k for (k,) in self._db.execute("SELECT key FROM items WHERE stage = ?", (stage,)) if k not in keep]
        if keys:
            with self._transaction():
                for key in keys:
                    self._db.execute("INSERT INTO stale_items SELECT * FROM items WHERE stage = ? AND key = ?", (stage, key))
                    self._db.execute("DELETE FROM items WHERE stage = ? AND key = ?", (stage, key))
        return len(keys)

    # -- items -----------------------------------------------------------------------------
    def put(self, stage: str, items: Iterable[tuple[str, str, str | None, str | None, dict]]) -> None:
        """Write ``(key, state, outcome, reason, record)`` items in one transaction."""
        digest = self._hashes.get(stage, "")
        now = time.time()
        with self._transaction():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM items WHERE stage = ?", (stage,)).fetchone()[0]
            for key, state, outcome, reason, record in items:
                seq += 1
                self._db.execute(
                    "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (stage, key, state, outcome, reason, json.dumps(record, default=str), digest, seq, now),
                )

    def items(self, stage: str, state: str | None = None, fields: tuple[str, ...] | None = None) -> list[Item]:
        """The stage's items in the order they were stored. ``fields`` keeps only those record
        fields (missing ones read as ``None``), picked out inside SQLite, for callers that hold
        every item of a large stage but not its texts."""
        record = "record"
        if fields is not None:
            record = "json_object(" + ", ".join(f"'{f}', {json_field(f)}" for f in fields) + ")"
        query = f"SELECT stage, key, state, outcome, reason, {record} FROM items WHERE stage = ?"
        args: tuple = (stage,)
        if state is not None:
            query += " AND state = ?"
            args += (state,)
        rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [Item(s, k, st, o, r, json.loads(rec)) for s, k, st, o, r, rec in rows]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only query over ``items``: views of a large stage (the report's
        counts and histograms) aggregate inside SQLite instead of holding every record."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise ValueError("RunStore.query runs SELECT statements only")
        return self._db.execute(sql, params).fetchall()

    def record(self, stage: str, key: str) -> dict | None:
        """One item's whole record, or ``None`` if the item has none."""
        row = self._db.execute("SELECT record FROM items WHERE stage = ? AND key = ?", (stage, key)).fetchone()
        return json.loads(row[0]) if row else None

    def keys(self, stage: str, *, state: str | None = None, order: tuple[str, ...] = ()) -> list[str]:
        """The stage's item keys, ordered by record fields (else as stored)."""
        query = "SELECT key FROM items WHERE stage = ?"
        args: tuple = (stage,)
        if state is not None:
            query += " AND state = ?"
            args += (state,)
        by = ", ".join(f"json_extract(record, '$.{field}')" for field in order) or "seq"
        return [key for (key,) in self._db.execute(f"{query} ORDER BY {by}", args)]

    def records(self, stage: str, keys: list[str]) -> list[dict]:
        """The records of these items, in the order of ``keys`` (keys with no item are skipped)."""
        found: dict[str, dict] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for key, record in self._db.execute(
                    f"SELECT key, record FROM items WHERE stage = ? AND key IN ({marks})", (stage, *chunk)):
                found[key] = json.loads(record)
        return [found[key] for key in keys if key in found]

    def iter_records(self, stage: str, *, state: str | None = None, order: tuple[str, ...] = (),
                     batch: int = 500) -> Iterator[list[dict]]:
        """The stage's records in batches (ordered by record fields, else as stored), so that a
        whole table never has to be in memory at once. Each batch is its own short query, so
        the caller may write to the store between batches (the keys are fixed at the start)."""
        keys = self.keys(stage, state=state, order=order)
        for start in range(0, len(keys), batch):
            yield self.records(stage, keys[start:start + batch])

    def stage_names(self) -> list[str]:
        """Stages that recorded at least one item, alphabetically."""
        return [stage for (stage,) in self._db.execute("SELECT DISTINCT stage FROM items ORDER BY stage")]

    def states(self, stage: str) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, state FROM items WHERE stage = ?", (stage,)).fetchall())

    def counts(self, stage: str) -> dict[str, int]:
        """Counts by state and by outcome, e.g. ``{"done": 9, "failed": 1, "accepted": 4, ...}``."""
        counts: dict[str, int] = {}
        for state, outcome, n in self._db.execute(
            "SELECT state, outcome, COUNT(*) FROM items WHERE stage = ? GROUP BY state, outcome", (stage,)
        ):
            counts[state] = counts.get(state, 0) + n
            if outcome and state == DONE:
                counts[outcome] = counts.get(outcome, 0) + n
        return counts

    def totals(self, stage: str | None = None) -> dict[str, float]:
        """Requests and tokens spent, summed over records that carry ``usage``."""
        query = "SELECT record FROM items" + (" WHERE stage = ?" if stage else "")
        totals = {"requests": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "cost_usd": 0.0}
        for (record,) in self._db.execute(query, (stage,) if stage else ()):
            usage = json.loads(record).get("usage") or {}
            for name in totals:
                totals[name] += float(usage.get(name) or 0)
        return totals

    # -- small named values ----------------------------------------------------------------
    def get_meta(self, name: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else default

    def set_meta(self, name: str, value: str) -> None:
        with self._transaction():
            self._set_meta(name, value)

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
