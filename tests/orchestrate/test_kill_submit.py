"""`meshctl sweep` killed with SIGKILL anywhere in its submission window, then run again (issue 14).

Each trial adds new runs to one sweep in one results directory (the earlier trials' runs train on in
the background), kills the submitter at a random moment of its lifetime (every fourth trial while a
second `meshctl sweep` of the same spec runs beside it), and runs it again. After every
re-run no run may be left stranded (new, or claimed by the dead process); at the end every run has
trained exactly once and has had exactly one job. Counted from the run directories (jobs.jsonl, written
by each job that takes a run up; metrics.jsonl's first step) and from the scheduler (sacct by job name;
the local lanes' submission records), not only from the ledger.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from meshctl.orchestrate import records
from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec

pytestmark = pytest.mark.slow

TRIALS = 20
SPEEDY = {"global_batch": 4, "micro_batch": 4, "tokens": 256, "log_every": 1, "val_every": 2, "val_batches": 1,
          "ckpt_every": 2, "precision": "32"}


def kill_spec(data: Path, kind: str, seeds: int) -> dict:
    spec = tiny_sweep(data, name=f"kills_{kind}", train=SPEEDY, seeds=list(range(seeds)))
    if kind == "local":  # two new runs per trial in one lane: a lane of several runs is adopted whole
        spec["executor"] = {"kind": "local", "max_parallel": 1, "resources": {"timeout_min": 10}}
        spec["groups"][0]["variants"] = [{"structure": "1+1R2+1", "recurrence": "base"}]
    else:
        spec["executor"] = {"kind": "slurm", "max_parallel": 4, "resources": {"timeout_min": 10, "cpus_per_task": 1}}
        spec["groups"][0]["variants"] = []
    return spec


def start_sweep(path: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meshctl", "sweep", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "MESHCTL_RESULTS": str(results)})


def registered(results: Path, sweep: str) -> set[str]:
    """The sweep's runs in the ledger, read directly (polled every few ms while a submitter runs)."""
    try:
        db = sqlite3.connect(f"file:{results / 'meshctl.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return {r for (r,) in db.execute("SELECT run_id FROM sweep_runs WHERE sweep = ?", (sweep,))}
        finally:
            db.close()
    except sqlite3.OperationalError:
        return set()


def phase(results: Path, sweep: str, run_ids: set[str]) -> str:
    """How far the killed submitter got with this trial's runs (for the trial log, not asserted)."""
    if not run_ids:
        return "before registering"
    if any(set(r.runs) & run_ids for r in records.pending(results / "jobs" / sweep)):
        return "record written, ledger not told"
    db = sqlite3.connect(results / "meshctl.sqlite")
    rows = [r for r in db.execute("SELECT run_id, state, claimed_by FROM runs") if r[0] in run_ids]
    db.close()
    if all(state == "submitted" for _, state, _ in rows):
        return "after recording"
    if any(state == "submitted" for _, state, _ in rows):
        return "between batches"
    if any(claimed for _, _, claimed in rows):
        return "claimed, no record"
    return "registered, not claimed"


def kill_in_window(path: Path, results: Path, sweep: str, runs: int, window: float, rng: random.Random) -> set[str]:
    """Start a submitter, wait until it has registered `runs` runs, SIGKILL it a random moment into
    the rest of its work (reconcile, claim, record, submit, ledger, release); the runs it registered."""
    proc = start_sweep(path, results)
    deadline = time.monotonic() + 120
    while len(registered(results, sweep)) < runs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.choice((0.3, 1.2)) * rng.random() * window)  # half of them early: claim to first record
    proc.kill()
    proc.wait()
    return registered(results, sweep)


def run_trials(tmp_path: Path, data: Path, kind: str, trials: int) -> Counter:
    rng = random.Random(14)
    results = tmp_path / "results"
    sweep = f"kills_{kind}"
    per_seed = 2 if kind == "local" else 1
    path = tmp_path / f"{sweep}.yaml"
    write_spec(path, kill_spec(data, kind, 1))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_sweep(path, results)
    while not registered(results, sweep) and proc.poll() is None:
        time.sleep(0.002)
    registered_at = time.monotonic()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    window = time.monotonic() - registered_at  # registration to exit: where a kill can strand or duplicate
    phases: Counter = Counter()
    for trial in range(1, trials + 1):
        write_spec(path, kill_spec(data, kind, trial + 1))
        before = registered(results, sweep)
        rival = start_sweep(path, results) if trial % 4 == 0 else None  # two sweeps at once, one of them killed
        new = kill_in_window(path, results, sweep, (trial + 1) * per_seed, window, rng) - before
        if rival is not None:
            assert rival.wait(timeout=300) == 0, rival.stderr.read()
        phases[phase(results, sweep, new)] += 1
        again = meshctl("sweep", str(path), "--format", "json", results=results)
        assert again.returncode == 0, again.stderr
        doc = json.loads(again.stdout)
        assert set(doc["submitted"]) | set(doc["skipped"]) == registered(results, sweep)
        stranded = {r: state for r, state in doc["skipped"].items() if state in ("new", "submitting", "incomplete")}
        assert not stranded, f"trial {trial}: left stranded by the re-run: {stranded}"
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=900)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"completed": (trials + 1) * per_seed}
    assert_once(results, sweep, [r["run_id"] for r in doc["runs"]], kind, since)
    return phases


def status_doc(results: Path, sweep: str) -> dict:
    out = meshctl("status", sweep, "--format", "json", results=results)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_once(results: Path, sweep: str, run_ids: list[str], kind: str, since: str) -> None:
    folder = results / "jobs" / sweep
    assert records.pending(folder) == [], "every submission record was settled"
    for run_id in run_ids:
        run_dir = results / "runs" / run_id
        jobs = [json.loads(line) for line in (run_dir / "jobs.jsonl").read_text().splitlines()]
        assert len(jobs) == 1, f"{run_id}: taken up by {len(jobs)} jobs: {jobs}"
        first_steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                       if json.loads(line).get("step") == 1]
        assert len(first_steps) == 1, f"{run_id}: trained from scratch {len(first_steps)} times"
    db = sqlite3.connect(results / "meshctl.sqlite")
    recorded = Counter(r for (r,) in db.execute("SELECT run_id FROM submissions"))
    db.close()
    assert all(recorded[r] == 1 for r in run_ids), recorded
    jobs_per_run = scheduler_jobs(folder, kind, since)
    assert {r: len(jobs_per_run.get(r, ())) for r in run_ids} == {r: 1 for r in run_ids}


def scheduler_jobs(folder: Path, kind: str, since: str) -> dict[str, set[str]]:
    """run id -> the jobs that exist(ed) for it: SLURM's accounting by job name, mapped through the
    submission records (a name is meshctl-<sweep>-<record token>, array task i = the record's run i); a
    local lane's settled record names its process."""
    settled = {r.name: r for r in records.settled(folder)}
    out: dict[str, set[str]] = {}
    if kind == "local":
        for record in settled.values():
            for run_id in record.runs:
                out.setdefault(run_id, set()).add(record.job_ids[0])
        return out
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-S", since, "-o", "JobID,JobName,Submit"],
                           capture_output=True, text=True, check=True).stdout
    prefix = f"meshctl-{folder.name}-"
    for line in sacct.splitlines():
        job_id, name, submitted = line.split("|")
        if not name.startswith(prefix) or submitted < since:  # -S also lists jobs that merely ran after it
            continue
        assert name in settled, f"job {job_id} ({name}) has no settled submission record"
        record = settled[name]
        base, _, index = job_id.partition("_")
        for i in ([int(index)] if index.isdigit() else range(len(record.runs))):
            out.setdefault(record.runs[i], set()).add(f"{base}_{i}" if len(record.runs) > 1 or index else base)
    return out


def test_kill_nine_mid_submit_on_the_local_executor(tmp_path, prepared_demo) -> None:
    phases = run_trials(tmp_path, prepared_demo, "local", TRIALS)
    print(f"local kills by phase: {dict(phases)}")


@pytest.mark.slurm
def test_kill_nine_mid_submit_on_slurm(tmp_path, prepared_demo) -> None:
    phases = run_trials(tmp_path, prepared_demo, "slurm", TRIALS)
    print(f"slurm kills by phase: {dict(phases)}")


def _submit_then_die(spec_path: str, results: str, target: str) -> None:
    """A `meshctl sweep` killed right after the scheduler accepted its job, before anything recorded it:
    `sbatch`: inside submitit, before it moved the tasks' pickles into place; `lane`: the local lane's
    process started, its pid known to nobody."""
    import submitit.local.local as local
    import submitit.slurm.slurm as slurm

    from meshctl.orchestrate.submit import submit_sweep
    from meshctl.specs.sweep import load_sweep

    if target == "sbatch":
        real = slurm.SlurmExecutor._submit_command

        def submit_command(self, command):  # type: ignore[no-untyped-def]
            real(self, command)
            os._exit(9)

        slurm.SlurmExecutor._submit_command = submit_command
    else:
        real_start = local.start_controller

        def start_controller(*args, **kwargs):  # type: ignore[no-untyped-def]
            real_start(*args, **kwargs)
            os._exit(9)

        local.start_controller = start_controller
    sweep, raw = load_sweep(spec_path)
    submit_sweep(sweep, raw, spec_path, results)


@pytest.mark.parametrize("kind", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_a_job_submitted_but_never_recorded_is_adopted(tmp_path, prepared_demo, kind) -> None:
    spec = kill_spec(prepared_demo, kind, 2)  # local: one lane of 4 runs; slurm: an array of 2
    spec["name"] = f"adopt_{kind}"
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    target = "sbatch" if kind == "slurm" else "lane"
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = mp.get_context("fork").Process(target=_submit_then_die, args=(str(path), str(results), target))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 9
    sweep = spec["name"]
    (record,) = records.pending(results / "jobs" / sweep)  # the job exists; only its record knows of it
    assert status_doc(results, sweep)["counts"] == {"new": len(record.runs)}
    again = meshctl("sweep", str(path), "--format", "json", results=results)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["submitted"] == {} and set(doc["skipped"].values()) <= {"pending", "running"}
    assert "adopted" in again.stderr
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=600)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert {r["state"] for r in runs} == {"completed"}
    assert_once(results, sweep, [r["run_id"] for r in runs], kind, since)
