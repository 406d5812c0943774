"""Real crashes: a fresh interpreter appends with fsync=always and reports
every acknowledged seq over a pipe; the parent SIGKILLs it (at random moments,
or at a named crash point inside a segment roll or a snapshot) and checks
that recovery returns every acknowledged record, in order, and nothing that
was never appended."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from wal_helpers import HERE, replay_all, wal_impl_fixture

from wheelsched.wal import OP, SNAPSHOT

TAGS = "abcdefghijklmnopqrstuvwxyz0123456789"

# every test runs on both record walks (C and pure Python; children inherit the choice)
wal_impl = wal_impl_fixture()


def run_child(d: Path, tag: str, *, kill_after: float | None, seg_bytes: int = 16384,
              point: str = "", nth: int = 0, snap_every: int = 0, timeout: float = 20.0,
              ) -> dict[int, list]:
    """Run one child round; returns {seq: payload} of acknowledged records."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
    args = [sys.executable, str(HERE), str(d), "always", str(seg_bytes), tag,
            point, str(nth), str(snap_every)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    acked: dict[int, list] = {}
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts and parts[0] == "READY":
                ready.set()
            elif len(parts) == 3 and parts[0] == "ACK":
                acked[int(parts[1])] = [tag, int(parts[2])]

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    if kill_after is not None:
        assert ready.wait(timeout), proc.stderr.read() if proc.poll() is not None else "no READY"
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"child did not die at crash point {point}")
    t.join(5)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return acked


def check(d: Path, acked_all: dict[int, list], appended_tags: set[str]) -> list:
    got = replay_all(d)
    state = [r.payload for r in got]
    ops = {r.seq: r.payload for r in got if r.kind == OP}
    snap_seq = max((r.seq for r in got if r.kind == SNAPSHOT), default=0)
    op_seqs = [r.seq for r in got if r.kind == OP]
    in_state = {tuple(p) for p in state}
    assert op_seqs == sorted(op_seqs) and len(set(op_seqs)) == len(op_seqs)
    for seq, payload in acked_all.items():
        if seq > snap_seq:
            assert ops.get(seq) == payload, f"acknowledged seq {seq} lost or changed"
        else:
            assert tuple(payload) in in_state, f"acknowledged seq {seq} missing from the snapshot"
    # nothing invented: every payload is one a child appended, each at most once
    assert all(p[0] in appended_tags for p in state)
    assert len(in_state) == len(state)
    # per child, its payloads appear in the order it appended them
    for tag in appended_tags:
        mine = [p[1] for p in state if p[0] == tag]
        assert mine == sorted(mine)
    return got


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(1234)
    acked_all: dict[int, list] = {}
    tags: set[str] = set()
    rounds = 24
    for r in range(rounds):
        tag = TAGS[r]
        tags.add(tag)
        acked = run_child(tmp_path, tag, kill_after=rng.uniform(0.02, 0.35),
                          snap_every=2000 if r % 3 == 2 else 0)
        acked_all.update(acked)
        check(tmp_path, acked_all, tags)
    assert len(acked_all) > rounds * 10  # the children did get acknowledgements


ROLL_POINTS = [
    "roll.before_fsync_old",
    "roll.after_tmp_write",
    "roll.after_tmp_fsync",
    "roll.after_rename",
    "roll.after_dirsync",
]
SNAPSHOT_POINTS = [
    "snapshot.after_write",
    "snapshot.before_fsync",
    "snapshot.after_fsync",
    "snapshot.after_rename",
    "snapshot.after_dirsync",
    "snapshot.after_marker",
    "snapshot.before_delete_segments",
    "snapshot.after_delete_segments",
    "snapshot.after_delete_snapshots",
]


@pytest.mark.parametrize("point", ROLL_POINTS + SNAPSHOT_POINTS)
def test_crash_points(tmp_path: Path, point: str) -> None:
    snap = point.startswith("snapshot")
    acked_all: dict[int, list] = {}
    tags = {"p"}
    # first a clean-ish round so the crash happens with history on disk
    acked_all.update(run_child(tmp_path, "p", kill_after=0.1, seg_bytes=4096))
    # crash at the 2nd hit of the point (rolls every ~100 records; snapshots every 300 appends)
    acked = run_child(tmp_path, "q", kill_after=None, seg_bytes=4096, point=point, nth=2,
                      snap_every=300 if snap else 0)
    tags.add("q")
    acked_all.update(acked)
    check(tmp_path, acked_all, tags)
    # and the recovered log keeps working
    acked_all.update(run_child(tmp_path, "r", kill_after=0.1, seg_bytes=4096))
    tags.add("r")
    check(tmp_path, acked_all, tags)
