"""The SQLite ledger: state survives processes, and concurrent claimers never both take a run."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from meshctl.orchestrate.ledger import Ledger, Submission


def fresh(state: str, live_claim: bool) -> bool:
    return state == "new" and not live_claim


def register(ledger: Ledger, n: int = 4) -> list[str]:
    runs = [(f"run{i}", {"seed": i}, Path(f"/tmp/runs/run{i}"), {"seed": i}) for i in range(n)]
    ledger.register_sweep("demo", "hash0", {"name": "demo"}, "sweeps/demo.yaml", runs)
    return [r[0] for r in runs]


def _claim_all(path: str, barrier, out) -> None:
    with Ledger(path) as ledger:
        barrier.wait()
        ids = [r.run_id for r in ledger.runs("demo")]
        out.put(ledger.claim(ids, fresh))


def test_two_processes_claim_disjoint_sets(tmp_path) -> None:
    path = str(tmp_path / "meshctl.sqlite")
    with Ledger(path) as ledger:
        ids = register(ledger, 40)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(path, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(got[0] + got[1]) == sorted(ids)
    assert not set(got[0]) & set(got[1])


def test_register_is_idempotent_and_keeps_state(tmp_path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ids = register(ledger)
        ledger.record_submissions([Submission(ids[0], "local", "123", None, "/tmp/f", time.time())])
        register(ledger)  # the same sweep again
        rows = {r.run_id: r for r in ledger.runs("demo")}
        assert [r.run_id for r in ledger.runs("demo")] == ids
        assert rows[ids[0]].state == "submitted" and rows[ids[1]].state == "new"
        assert ledger.latest_submissions()[ids[0]].job_id == "123"
        assert not ledger.has_live_claim(ids[0])
    with Ledger(tmp_path / "l.sqlite") as again:  # another process, later
        assert again.run(ids[0]).state == "submitted"
        assert [t[0] for t in again.transitions(ids[0])] == ["submitted"]


def test_claims_expire_and_states_record_transitions(tmp_path, monkeypatch) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ids = register(ledger, 2)
        assert ledger.claim(ids, fresh) == ids
        assert ledger.claim(ids, fresh) == []  # live claims block a second claimer
        monkeypatch.setattr("meshctl.orchestrate.ledger.CLAIM_TIMEOUT_S", 0.0)
        assert ledger.claim(ids, fresh) == ids  # a dead claimer's claims are taken over
        ledger.set_states({ids[0]: "running"})
        ledger.set_states({ids[0]: "running"})
        ledger.set_states({ids[0]: "completed"}, "final.json")
        assert [t[0] for t in ledger.transitions(ids[0])] == ["running", "completed"]


def test_a_claim_names_its_holder_and_dies_with_it(tmp_path) -> None:
    import subprocess
    import sys

    from meshctl.orchestrate.claims import Owner, hostname, me, process_start

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(hostname(), holder.pid, process_start(holder.pid), time.time())
        with Ledger(tmp_path / "l.sqlite") as ledger:
            ids = register(ledger, 2)
            assert ledger.claim(ids, fresh, owner=owner) == ids
            assert ledger.claim(ids, fresh) == []  # its holder lives
            row = ledger.runs("demo")[0]
            assert row.live_claim and row.holder == owner and f"pid {holder.pid} on {hostname()}" in owner.describe()
            # the same pid with another start time is another process (pids are reused): no claim
            impostor = Owner(hostname(), holder.pid, "other-boot:1", time.time())
            assert not impostor.alive() and owner.alive()
            holder.kill()
            holder.wait()
            assert ledger.claim(ids, fresh) == ids  # at once, not after a timeout
            assert ledger.runs("demo")[0].holder.pid == me().pid
    finally:
        holder.kill()


def test_a_claim_from_another_host_is_a_lease_renewed_while_its_holder_works(tmp_path, monkeypatch) -> None:
    from meshctl.orchestrate import claims
    from meshctl.orchestrate.claims import Owner

    elsewhere = Owner("another-host", 4242, "boot:77", time.time())
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ids = register(ledger, 2)
        assert ledger.claim(ids, fresh, owner=elsewhere) == ids
        assert ledger.claim(ids, fresh) == []  # cannot ask another host's kernel: the lease runs
        monkeypatch.setattr(claims, "LEASE_S", 0.4)
        with ledger.lease(elsewhere):  # renews every LEASE_S / 4
            time.sleep(0.8)
            assert ledger.claim(ids, fresh) == []  # renewed while it works
        time.sleep(0.5)
        assert ledger.claim(ids, fresh) == ids  # lapsed once renewals stopped


def test_a_claim_judged_on_a_stale_view_is_refused(tmp_path) -> None:
    """Two sweeps at once: A looks (no job), B claims, submits and records, A's stale view then writes
    `new` over B's state. A's claim must still fail: a submission was recorded after A looked."""
    with Ledger(tmp_path / "l.sqlite") as a, Ledger(tmp_path / "l.sqlite") as b:
        ids = register(a, 2)
        seen = a.submission_marks()
        assert b.claim(ids[:1], fresh) == ids[:1]
        b.record_submissions([Submission(ids[0], "slurm", "38", None, "/tmp/f", time.time())])
        a.set_states({ids[0]: "new"})  # A's stale observation
        assert a.claim(ids, fresh, seen=seen) == ids[1:]
        assert a.claim(ids[:1], fresh, seen=a.submission_marks()) == ids[:1]  # judged afresh: its state decides
