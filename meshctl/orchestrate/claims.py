"""Who holds a claim: host, pid and the process's start time, so a dead holder is seen at once.

A pid alone is not an identity (pids are reused), a pid with the start time from /proc/PID/stat (and
the boot it belongs to) is. On the claim's own host a holder is alive exactly while that process is;
a holder on another host cannot be asked, so its claim is a lease that the holder renews while it
works (`Lease` in the ledger) and that lapses `LEASE_S` after its last renewal.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

LEASE_S = 60.0  # a claim from another host lapses this long after its holder last renewed it


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str  # "<boot id>:<start ticks>" on Linux; "" where /proc is missing
    since: float

    def token(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} since {at}"

    def is_here(self) -> bool:
        return self.host == hostname()

    def alive(self) -> bool:
        """Only meaningful on the owner's host: the process runs and is the same process."""
        start = process_start(self.pid)
        if start is None:
            return False
        return not self.start or start == self.start


def me() -> Owner:
    return Owner(hostname(), os.getpid(), process_start(os.getpid()) or "", time.time())


def parse(token: str | None) -> Owner | None:
    """An owner from a ledger's `claimed_by`; None for none, and for claims of older meshctl ("pid@time")."""
    if not token or not token.startswith("{"):
        return None
    try:
        return Owner(**json.loads(token))
    except (TypeError, ValueError):
        return None


def live(token: str | None, renewed_at: float | None, now: float, timeout_s: float) -> bool:
    """A claim counts while its holder may still be at work: on this host while its process lives
    (and it renewed within `timeout_s`, a cap for a stuck holder); elsewhere while its lease runs."""
    if renewed_at is None:
        return False
    age = now - renewed_at
    owner = parse(token)
    if owner is None or not owner.is_here():
        return age < min(timeout_s, LEASE_S)
    return age < timeout_s and owner.alive()


@lru_cache(maxsize=1)
def hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """"<boot id>:<start time in clock ticks>" of a live process, "" without /proc, None if it is gone
    (or a zombie: it has ended and only waits for its parent)."""
    if not _has_proc():
        return _exists(pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id()}:{fields[19]}"


@lru_cache(maxsize=1)
def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _exists(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""
