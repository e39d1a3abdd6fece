"""Each use of Ray's private APIs (serve/ray/internals.py), called against the session's live Ray:
run this file first when Ray is bumped. (That a dead raylet is noticed is tests/test_restart.py's,
which kills one.)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from serve.ray import internals, launcher
from tests.integration.conftest import APP, Gateway, replica_pids


def test_the_kv_directory_publishes_lists_removes_and_shares_one_secret(gateway: Gateway) -> None:
    directory = internals.KVDirectory()
    prefix = f"direct/test-{uuid.uuid4().hex}/"
    directory.publish(prefix + "a", "10.0.0.1:1")
    directory.publish(prefix + "b", "10.0.0.2:2")
    directory.publish(prefix + "a", "10.0.0.1:3")  # a replica publishing again: overwritten
    assert directory.listing(prefix) == {prefix + "a": "10.0.0.1:3", prefix + "b": "10.0.0.2:2"}
    directory.remove(prefix + "a")
    directory.remove(prefix + "b")
    assert directory.listing(prefix) == {}
    name = f"test-{uuid.uuid4().hex}"
    first = directory.shared_secret(name)
    assert len(first) == 32 and directory.shared_secret(name) == first
    assert directory.shared_secret(APP) != first  # one per application


def test_serve_details_lists_the_gateways_running_replicas(gateway: Gateway) -> None:
    deployments = internals.serve_details()["applications"][APP]["deployments"]
    router = deployments["Router"]
    assert str(getattr(router["status"], "value", router["status"])) == "HEALTHY"
    states = [str(getattr(r["state"], "value", r["state"])) for r in router["replicas"]]
    assert states and set(states) == {"RUNNING"}
    assert gateway.autoscaled in deployments


def test_applying_the_running_config_again_restarts_no_replica(gateway: Gateway) -> None:
    before = replica_pids(APP, "Router")
    assert internals.start_serve_and_deploy(gateway.config) == [APP]
    launcher.wait_running([APP], timeout_s=120)
    assert replica_pids(APP, "Router") == before


def test_a_live_local_ray_has_no_dead_core_process(gateway: Gateway) -> None:
    assert internals.dead_core_processes() == []


def test_the_session_folder_is_this_sessions_and_holds_the_replicas_metrics(
    gateway: Gateway,
) -> None:
    folder = Path(internals.session_dir())
    assert folder.is_dir() and folder.name.startswith("session_")
    assert folder.resolve() == Path("/tmp/ray/session_latest").resolve()  # this test's Ray
    assert any((folder / "modelgate-metrics").glob("*.db"))  # the replicas write there


def test_rebuilding_an_application_runs_its_builder_again_and_keeps_the_others(
    gateway: Gateway,
) -> None:
    """rebuild_app (the alias follower's) sets the app's revision, so Serve builds it again:
    its routers are replaced, and every application stays deployed."""
    before = replica_pids(APP, "Router")
    internals.rebuild_app(APP, "test-revision")
    try:
        deadline = time.monotonic() + 120
        while True:
            details = internals.serve_details()["applications"]
            config = details[APP]["deployed_app_config"]
            now = replica_pids(APP, "Router")
            if now and not set(now) & set(before):
                break
            assert time.monotonic() < deadline, (before, now)
            time.sleep(0.5)
        launcher.wait_running([APP], timeout_s=120)
        assert config["args"]["revision"] == "test-revision"
        assert set(details) == {APP}
    finally:
        launcher.deploy(gateway.config)  # without the revision: rebuilt once more
