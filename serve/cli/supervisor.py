"""`modelgate serve`'s supervisor: with a local Ray, the gateway (Ray, the deployment) lives in a
child process, started again if its Ray instance stops, and every process it leaves is stopped.
Ctrl-C is passed on to the child; a second one cuts its drain short."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

#: A supervised gateway restarted more often than this within RESTART_WINDOW_S gives up.
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0
RAY_STOPPED = 3  # exit status of a gateway whose local Ray instance stopped
STOP_GRACE_S = 90.0  # a supervised gateway asked to stop is killed after this long


def supervise(args: argparse.Namespace) -> int:
    import signal
    import time

    command = [sys.executable, "-m", "serve.cli", "serve", args.config, "--supervised"]
    command += ["--ray-metrics-port", str(args.ray_metrics_port)]
    command += ["--dashboard"] if args.dashboard else []
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "https_port", "grpcs_port", "ingress"):
        value = getattr(args, flag, None)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)  # the child stops Serve and Ray in order

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _become_subreaper()
    starts: list[float] = []
    while True:
        starts = [t for t in starts if time.monotonic() - t < RESTART_WINDOW_S]
        starts.append(time.monotonic())
        samples = ["--samples"] if args.samples and len(starts) == 1 else []
        # A session of its own: a terminal's Ctrl-C reaches this process only, which passes
        # each SIGINT on (`stop`): the first stops Serve in order, a second cuts its drain short.
        child = subprocess.Popen(command + samples, start_new_session=True)
        try:
            code = _wait_child(child, lambda: stopping)
        finally:
            _kill_leftovers(child.pid)  # what is left of that Ray instance (workers, HAProxy)
        if stopping:
            return 0
        if code == 2:  # the config itself is wrong: starting again would fail the same way
            return code
        if len(starts) > MAX_RESTARTS:
            print(
                f"modelgate: the gateway stopped {len(starts)} times within "
                f"{RESTART_WINDOW_S:g} s; giving up",
                file=sys.stderr,
            )
            return 1
        print(
            f"modelgate: the gateway's Ray instance stopped (exit {code}); starting a fresh one "
            f"and deploying {args.config} again",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(1.0)


def _wait_child(child: subprocess.Popen[bytes], stopping: Callable[[], bool]) -> int:
    """The child's exit status; once asked to stop, it has STOP_GRACE_S to stop Ray in order."""
    import time

    asked: float | None = None
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _reap_orphans(exclude=child.pid)
            if stopping():
                asked = asked or time.monotonic()
                if time.monotonic() - asked > STOP_GRACE_S:
                    child.kill()


def _become_subreaper() -> None:
    """Linux: orphans of the child's processes (Ray workers, HAProxy) are re-parented to this
    process instead of init, so that none can outlive a dead Ray instance unseen."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _kill_leftovers(child_pid: int) -> None:
    """SIGKILL the child's process group and every process still below this one, then reap."""
    import signal
    import time

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child_pid, signal.SIGKILL)
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _reap_orphans(exclude=None) and time.monotonic() < deadline:
        time.sleep(0.1)


def _reap_orphans(exclude: int | None) -> bool:
    """Collect the exit status of adopted orphans that have exited (not the child's: Popen
    owns that); True while some process below this one is still there."""
    left = False
    for pid in descendants(os.getpid()):
        if pid == exclude:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (a grandchild): its parent reaps it
            done = 0
        left = left or done == 0
    return left


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def block(watch_ray: bool) -> int:
    """Serve until Ctrl-C / SIGTERM (0), or until the local Ray instance stops (3)."""
    import signal
    import time

    from serve.ray import launcher

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a plain kill stops Ray too (see _serve's finally)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    try:
        while True:
            time.sleep(2)
            dead = launcher.dead_ray_processes() if watch_ray else []
            if dead:
                print(f"\nRay stopped: {', '.join(dead)} exited", file=sys.stderr, flush=True)
                return RAY_STOPPED
    except KeyboardInterrupt:
        print("\nstopping")
    return 0
