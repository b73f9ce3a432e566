"""Tests marked `slurm` need a live cluster and run only with MESHCTL_SLURM=1.

`.ci/run` starts one with scripts/slurm/start_local_slurm.sh and then sets MESHCTL_SLURM=1.
Without it those tests are skipped; with it, a cluster that does not answer fails them instead.
"""

from __future__ import annotations

import os
import subprocess

import pytest

SLURM_ENABLED = os.environ.get("MESHCTL_SLURM") == "1"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The node's state in `sinfo`, once per session; fails when the cluster MESHCTL_SLURM=1 promised is not up."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.fail("MESHCTL_SLURM=1 but sinfo is not installed; run scripts/slurm/start_local_slurm.sh")
    if out.returncode != 0 or not out.stdout.strip():
        pytest.fail(f"MESHCTL_SLURM=1 but sinfo does not answer ({out.stderr.strip()}); "
                    "run scripts/slurm/start_local_slurm.sh")
    return out.stdout.split()[0]


@pytest.fixture(autouse=True)
def _slurm_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slurm") is None:
        return
    if not SLURM_ENABLED:
        pytest.skip("needs a running SLURM: scripts/slurm/start_local_slurm.sh, then MESHCTL_SLURM=1")
    request.getfixturevalue("slurm_cluster")
