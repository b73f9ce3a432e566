"""meshctl/train/allocator.py: CPU training processes keep freed memory instead of unmapping it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

CHILD = """
import sys, torch
from meshctl.train.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def rss_mib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024
before = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, touched
del x
print(kept, rss_mib() - before)
"""


def freed_but_resident(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True)
    kept, mib = out.stdout.split()
    return kept == "True", float(mib)


def test_freed_activations_stay_in_the_process_only_when_kept() -> None:
    kept, resident = freed_but_resident("keep")
    assert kept and resident > 200  # the freed 256 MiB are still mapped: the next step reuses them
    kept, resident = freed_but_resident("default")
    assert not kept and resident < 50  # glibc's default unmapped the block on free
