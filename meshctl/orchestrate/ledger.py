"""The ledger: an SQLite index of sweeps, runs, submissions and state transitions.

The run directory is the source of truth for progress and results; the ledger remembers which runs
belong to which sweep and which scheduler job ids were submitted for them, so `status` and `cancel`
work from any shell after any restart. WAL mode and `BEGIN IMMEDIATE` transactions make it safe for
several meshctl processes at once: a run is claimed inside one write transaction before it is
submitted, so two `meshctl sweep` processes never submit it twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshctl.orchestrate import claims
from meshctl.orchestrate.claims import Owner

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, spec_hash TEXT NOT NULL, spec_json TEXT NOT NULL, source TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, spec_json TEXT NOT NULL, run_dir TEXT NOT NULL,
    state TEXT NOT NULL, claimed_by TEXT, claimed_at REAL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL REFERENCES sweeps(name), run_id TEXT NOT NULL REFERENCES runs(run_id),
    position INTEGER NOT NULL, labels_json TEXT NOT NULL, PRIMARY KEY (sweep, run_id)
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    executor TEXT NOT NULL, job_id TEXT NOT NULL, array_index INTEGER, folder TEXT NOT NULL,
    submitted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_run ON submissions(run_id);
CREATE TABLE IF NOT EXISTS evaluation_plans (
    sweep TEXT PRIMARY KEY REFERENCES sweeps(name), plan_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, state TEXT NOT NULL,
    at REAL NOT NULL, detail TEXT
);
"""

# How long a connection waits for another process's lock before giving up.
BUSY_TIMEOUT_S = 60.0

# A claim not renewed for this long is abandoned even if its holder's process lives (a stuck holder);
# a dead holder on this host loses its claims at once, one on another host after claims.LEASE_S.
CLAIM_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunRow:
    run_id: str
    spec: dict
    run_dir: Path
    state: str
    labels: dict
    position: int
    claimed_at: float | None = None  # last renewal
    claimed_by: str | None = None

    @property
    def live_claim(self) -> bool:
        return _live(self.claimed_by, self.claimed_at)

    @property
    def holder(self) -> Owner | None:
        return claims.parse(self.claimed_by) if self.claimed_at is not None else None


@dataclass(frozen=True)
class Submission:
    run_id: str
    executor: str
    job_id: str
    array_index: int | None
    folder: str
    submitted: float


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _enable_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as db:  # not executescript: it would commit outside the transaction
            for statement in _statements(SCHEMA):
                db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # sweeps and runs
    def register_sweep(self, name: str, spec_hash: str, spec: dict, source: str | None,
                       runs: Iterable[tuple[str, dict, Path, dict]], evaluation: dict | None = None) -> None:
        """Record a sweep and its runs (run_id, resolved spec, run dir, labels); existing runs keep state.
        `evaluation` is its eval plan with task aliases expanded (what `status` counts documents of)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "spec_hash=excluded.spec_hash, spec_json=excluded.spec_json, source=excluded.source, updated=?",
                (name, spec_hash, json.dumps(spec, sort_keys=True), source, now, now, now),
            )
            db.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            db.execute("DELETE FROM evaluation_plans WHERE sweep = ?", (name,))
            if evaluation is not None:
                db.execute("INSERT INTO evaluation_plans VALUES (?, ?)", (name, json.dumps(evaluation, sort_keys=True)))
            for position, (run_id, run_spec, run_dir, labels) in enumerate(runs):
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, 'new', NULL, NULL, ?, ?) ON CONFLICT(run_id) DO NOTHING",
                    (run_id, json.dumps(run_spec, sort_keys=True), str(run_dir), now, now),
                )
                db.execute("INSERT INTO sweep_runs VALUES (?, ?, ?, ?)",
                           (name, run_id, position, json.dumps(labels, sort_keys=True)))

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM sweeps ORDER BY updated DESC")]

    def sweep_spec(self, name: str) -> dict | None:
        row = self._db.execute("SELECT spec_json FROM sweeps WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def evaluation_plan(self, name: str) -> dict | None:
        row = self._db.execute("SELECT plan_json FROM evaluation_plans WHERE sweep = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self, sweep: str | None = None) -> list[RunRow]:
        if sweep is None:
            rows = self._db.execute(
                "SELECT r.run_id, r.spec_json, r.run_dir, r.state, '{}', r.created, r.claimed_at, r.claimed_by FROM runs r "
                "ORDER BY r.created"
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT r.run_id, r.spec_json, r.run_dir, r.state, s.labels_json, s.position, r.claimed_at, r.claimed_by "
                "FROM runs r "
                "JOIN sweep_runs s ON s.run_id = r.run_id WHERE s.sweep = ? ORDER BY s.position", (sweep,)
            ).fetchall()
        return [RunRow(r[0], json.loads(r[1]), Path(r[2]), r[3], json.loads(r[4]), int(r[5]), r[6], r[7])
                for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        row = self._db.execute("SELECT run_id, spec_json, run_dir, state FROM runs WHERE run_id = ?",
                               (run_id,)).fetchone()
        return RunRow(row[0], json.loads(row[1]), Path(row[2]), row[3], {}, 0) if row else None

    def find_runs(self, prefix: str) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT run_id FROM runs WHERE run_id LIKE ?", (prefix + "%",))]

    # claims and submissions
    def claim(self, run_ids: Iterable[str], may_claim: Callable[[str, bool], bool],
              owner: Owner | None = None, seen: dict[str, int] | None = None) -> list[str]:
        """Atomically take the runs `may_claim(state, has_live_claim)` accepts; returns the ids claimed.
        A claim names its holder (host, pid, process start): a dead holder's claims count as none.
        `seen` (from `submission_marks`, read before the caller judged the runs) guards against a stale
        judgement: a run with a submission recorded since then is not claimed, whatever its state says."""
        token = (owner or claims.me()).token()
        now, claimed = time.time(), []
        with self.transaction() as db:
            marks = self._marks(db) if seen is not None else {}
            for run_id in run_ids:
                state, claimed_by, claimed_at = db.execute(
                    "SELECT state, claimed_by, claimed_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if seen is not None and marks.get(run_id, 0) != seen.get(run_id, 0):
                    continue  # submitted by someone else after the caller looked
                if may_claim(state, _live(claimed_by, claimed_at, now)):
                    db.execute("UPDATE runs SET claimed_by = ?, claimed_at = ?, updated = ? WHERE run_id = ?",
                               (token, now, now, run_id))
                    claimed.append(run_id)
        return claimed

    def submission_marks(self) -> dict[str, int]:
        """run id -> id of its latest recorded submission: read before judging runs, given to `claim`."""
        return self._marks(self._db)

    @staticmethod
    def _marks(db: sqlite3.Connection) -> dict[str, int]:
        return dict(db.execute("SELECT run_id, MAX(id) FROM submissions GROUP BY run_id").fetchall())

    def renew(self, owner: Owner) -> int:
        """Extend the lease of every claim `owner` holds (what a holder on another host is judged by)."""
        with self.transaction() as db:
            return db.execute("UPDATE runs SET claimed_at = ? WHERE claimed_by = ?",
                              (time.time(), owner.token())).rowcount

    @contextmanager
    def lease(self, owner: Owner) -> Iterator[Owner]:
        """Renew `owner`'s claims every quarter lease from a thread (its own connection) until the block ends."""
        stop = threading.Event()

        def renew() -> None:
            with Ledger(self.path) as ledger:
                while not stop.wait(claims.LEASE_S / 4):
                    ledger.renew(owner)

        thread = threading.Thread(target=renew, name="meshctl-lease", daemon=True)
        thread.start()
        try:
            yield owner
        finally:
            stop.set()
            thread.join()

    def release(self, run_ids: Iterable[str], owner: Owner | None = None) -> None:
        """Drop claims (only those `owner` holds, when given)."""
        with self.transaction() as db:
            if owner is None:
                db.executemany("UPDATE runs SET claimed_by = NULL, claimed_at = NULL WHERE run_id = ?",
                               [(r,) for r in run_ids])
            else:
                db.executemany("UPDATE runs SET claimed_by = NULL, claimed_at = NULL WHERE run_id = ? AND claimed_by = ?",
                               [(r, owner.token()) for r in run_ids])

    def record_submissions(self, submissions: Iterable[Submission], detail: str | None = None) -> None:
        """Store job ids, mark the runs submitted and drop their claims, in one transaction. A job already
        recorded for its run is not recorded again (two re-runs may adopt the same job)."""
        with self.transaction() as db:
            for s in submissions:
                if db.execute("SELECT 1 FROM submissions WHERE run_id = ? AND job_id = ?", (s.run_id, s.job_id)).fetchone():
                    continue
                db.execute("INSERT INTO submissions (run_id, executor, job_id, array_index, folder, submitted) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (s.run_id, s.executor, s.job_id, s.array_index, s.folder, s.submitted))
                self._set_state(db, s.run_id, "submitted",
                                f"{s.executor} job {s.job_id}" + (f" ({detail})" if detail else ""))
                db.execute("UPDATE runs SET claimed_by = NULL, claimed_at = NULL WHERE run_id = ?", (s.run_id,))

    def latest_submissions(self, run_ids: Iterable[str] | None = None) -> dict[str, Submission]:
        rows = self._db.execute(
            "SELECT run_id, executor, job_id, array_index, folder, submitted FROM submissions "
            "WHERE id IN (SELECT MAX(id) FROM submissions GROUP BY run_id)"
        ).fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return {r[0]: Submission(*r) for r in rows if wanted is None or r[0] in wanted}

    def has_live_claim(self, run_id: str) -> bool:
        row = self._db.execute("SELECT claimed_by, claimed_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return bool(row) and _live(row[0], row[1])

    # states
    def set_states(self, states: dict[str, str], detail: str | None = None) -> None:
        """Record observed states; a transition row is added only when a state changes."""
        with self.transaction() as db:
            for run_id, state in states.items():
                self._set_state(db, run_id, state, detail)

    @staticmethod
    def _set_state(db: sqlite3.Connection, run_id: str, state: str, detail: str | None) -> None:
        row = db.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or row[0] == state:
            return
        now = time.time()
        db.execute("UPDATE runs SET state = ?, updated = ? WHERE run_id = ?", (state, now, run_id))
        db.execute("INSERT INTO transitions (run_id, state, at, detail) VALUES (?, ?, ?, ?)",
                   (run_id, state, now, detail))

    def transitions(self, run_id: str) -> list[tuple[str, float, str | None]]:
        return [tuple(r) for r in self._db.execute(
            "SELECT state, at, detail FROM transitions WHERE run_id = ? ORDER BY id", (run_id,))]


def _live(claimed_by: str | None, claimed_at: float | None, now: float | None = None) -> bool:
    """The claim's holder may still be at work (see claims.live)."""
    return claims.live(claimed_by, claimed_at, time.time() if now is None else now, CLAIM_TIMEOUT_S)


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL, retrying: SQLite answers "database is locked" at once, without its busy handler,
    when another process is creating or switching the same new file (two sweeps started together)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
