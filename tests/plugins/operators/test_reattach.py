"""Reattachment after a worker crash, through the operator on a fake cluster: a pod of an earlier
try is reused only while it runs on this try's profile; any other leftover is deleted (or kept,
labelled checked) and a fresh pod created."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import models as k8s

from factor_pods import (
    TaskStateStore,
    complete,
    make_context,
    make_k8s_operator,
    make_operator,
    oom_kill,
    recorded_attempts,
    store_with_ooms,
)
from fake_kube import FakeCoreV1Api, set_disrupted, set_running
from finetune_sweep.operators.factor_pod import PodOOMKilled
from finetune_sweep.pods import spec as pods


def _leftover(kube: FakeCoreV1Api, *, profile: str, store: TaskStateStore, status: Any) -> k8s.V1Pod:
    """A pod an earlier try of this task instance created (its identity in the store)."""
    earlier = make_operator(profile=profile)
    context = make_context(store=TaskStateStore())
    earlier._apply_attempt_profile(context)
    pod = earlier.build_pod_request_obj(context, dry_run=True)
    status(pod)
    kube.add_pod(pod)
    store.set("pod_identifier", {"name": pod.metadata.name, "namespace": pod.metadata.namespace})
    return pod


def test_worker_crash_mid_try_then_retry_reattaches_to_the_running_pod(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    running = _leftover(kube, profile="STANDARD", store=store, status=set_running)
    kube.on_log_read[running.metadata.name] = complete

    # try 2 after a zombie: no OOM was classified, so the same profile, and the same pod
    op = make_k8s_operator()
    assert op.execute(make_context(try_number=2, store=store)) is None

    assert kube.calls.created == []
    assert op.pod.metadata.name == running.metadata.name
    assert recorded_attempts(registered_db) == []


def test_a_reattached_pod_is_recorded_under_the_attempt_that_created_it(
    kube: FakeCoreV1Api, registered_db: str
) -> None:
    store = TaskStateStore()
    running = _leftover(kube, profile="STANDARD", store=store, status=set_running)
    kube.on_log_read[running.metadata.name] = oom_kill

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        make_k8s_operator().execute(make_context(try_number=2, store=store))

    # the pod of try 1 ran (and would write its own rows as attempt 1): one attempt, not two
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


@pytest.mark.parametrize(
    ("status", "profile"),
    [
        pytest.param(oom_kill, "STANDARD", id="failed-pod-of-the-oom-try"),
        pytest.param(set_running, "STANDARD", id="running-pod-of-another-profile"),
        pytest.param(
            lambda pod: set_disrupted(pod, condition_reason="PreemptionByScheduler"), "MEDIUM", id="disrupted"
        ),
    ],
)
def test_a_leftover_pod_is_deleted_unless_it_runs_on_this_profile(
    kube: FakeCoreV1Api, registered_db: str, status: Any, profile: str
) -> None:
    store = store_with_ooms(1)
    old = _leftover(kube, profile=profile, store=store, status=status)
    kube.kubelet = complete

    op = make_k8s_operator()
    assert op.execute(make_context(try_number=2, store=store)) is None

    assert old.metadata.name in kube.calls.deleted
    assert len(kube.calls.created) == 1
    assert op.pod_request_obj.spec.containers[0].resources.limits == {"memory": "16Gi"}


def test_refused_label_patch_does_not_make_the_retry_reuse_the_oomed_pod(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.client.exceptions import ApiException

    monkeypatch.setenv("FINETUNE_KEEP_FAILED_PODS", "true")  # the failed pod stays, unlabelled
    kube.patch_error = ApiException(status=403, reason="Forbidden: pods/patch")
    kube.kubelet = oom_kill
    store = TaskStateStore()
    with pytest.raises(PodOOMKilled):
        make_k8s_operator().execute(make_context(store=store))
    (kept,) = kube.pods.values()
    assert "already_checked" not in kept.metadata.labels

    kube.kubelet = complete
    retry = make_k8s_operator()
    assert retry.execute(make_context(try_number=2, store=store)) is None

    assert retry.pod.metadata.name != kept.metadata.name
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
