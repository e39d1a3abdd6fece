"""The router's own admission (serve/ray/app.py), in front of Ray Serve's limits (no Ray)."""

from __future__ import annotations

from serve.core.admission import Admission
from serve.core.errors import ErrorCode
from serve.ray.app import ray_limits


def test_one_request_past_the_limit_is_refused_at_once_with_a_retry_hint() -> None:
    admission = Admission(2)
    assert admission.enter() and admission.enter()
    assert not admission.enter()
    refusal = admission.refusal()
    assert refusal.code is ErrorCode.OVERLOADED and refusal.retry_after_s == 1.0
    assert "2 requests queued, limit 2" in refusal.message
    admission.leave()
    assert admission.enter()  # a slot given back is taken again


def test_rays_own_limits_lie_above_modelgates() -> None:
    limits = ray_limits(4096)
    assert limits["max_ongoing_requests"] > 4096 and limits["max_queued_requests"] == 4096
