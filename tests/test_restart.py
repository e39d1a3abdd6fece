"""The whole Ray instance restarts: `modelgate serve` (supervising a local Ray) starts a fresh
one and deploys the same config again, and the gateway answers as before.

Runs `modelgate serve` as a user does, in a process of its own with its own Ray instance and
ports (beside the test session's), and kills that instance's raylet and GCS server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.cli.supervisor import descendants
from tests.supervised import alive, answer, cmdline, supervised_gateway, wait_log


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, set[Path]]]:
    """`modelgate serve` in a process of its own; with the private HAProxy folders that
    existed before it started (the test session's own Ray, say)."""
    with supervised_gateway(tmp_path) as gateway:
        yield gateway.proc, gateway.url, gateway.log, gateway.folders


def test_a_killed_ray_instance_is_started_again_with_the_same_config(
    supervised: tuple[subprocess.Popen[bytes], str, Path, set[Path]],
) -> None:
    proc, url, log, before = supervised
    wait_log(log, "serving; Ctrl-C to stop", count=1, timeout_s=180)
    first = answer(url, timeout_s=30)
    tree = descendants(proc.pid)
    core = [p for p in tree if "raylet" in cmdline(p) or "gcs_server" in cmdline(p)]
    assert len(core) >= 2, [cmdline(p)[:80] for p in tree]
    for pid in core:
        os.kill(pid, signal.SIGKILL)
    # The gateway goes down with its Ray instance, then comes back by itself.
    wait_log(log, "starting a fresh one", count=1, timeout_s=60)
    deadline = time.monotonic() + 15
    while left := [p for p in set(tree) & set(alive()) if cmdline(p)]:  # zombies have none
        assert time.monotonic() < deadline, [(p, cmdline(p)[:100]) for p in left]
        time.sleep(0.5)
    wait_log(log, "serving; Ctrl-C to stop", count=2, timeout_s=180)
    again = answer(url, timeout_s=30)
    assert again["outputs"] == first["outputs"] and again["model_version"] == "1"
    text = log.read_text(errors="replace")
    assert "Ray stopped" in text and "starting a fresh one" in text, text[-3000:]
    assert proc.poll() is None  # the supervisor is still running
    assert not set(tree) & set(descendants(proc.pid))  # a new instance, not the old one
    ours = set(Path("/tmp").glob("mg-*")) - before
    assert len(ours) == 1  # the live instance's private HAProxy folder; the dead one's is gone
    (folder,) = ours
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert not folder.exists()  # no socket, config or log of its HAProxy is left


def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing_behind(
    supervised: tuple[subprocess.Popen[bytes], str, Path, set[Path]],
) -> None:
    """Ctrl-C twice: the second one cuts Ray Serve's draining period short (30 s by default,
    the window the second signal lands in); Ray still stops and nothing of it is left."""
    proc, url, log, before = supervised
    wait_log(log, "serving; Ctrl-C to stop", count=1, timeout_s=180)
    answer(url, timeout_s=30)
    (folder,) = set(Path("/tmp").glob("mg-*")) - before
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    wait_log(log, "stopping Ray Serve", count=1, timeout_s=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert "stopped at once" in log.read_text(errors="replace")
    assert not folder.exists()
    assert not [p for p in set(tree) & set(alive()) if cmdline(p)]
