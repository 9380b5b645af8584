"""Reattachment after a worker crash, through the operator on a fake cluster: a pod of an earlier
try is reused only while it runs on this try's profile; any other leftover is deleted (or kept,
labelled checked) and a fresh pod created."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

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
from fake_kube import FakeCoreV1Api, api_error, set_disrupted, set_pending, set_running
from finetune_sweep.operators.factor_pod import PodOOMKilled
from finetune_sweep.operators.reattach import leftover_selector, newest_first, read_unless_gone, reusable
from finetune_sweep.pods import spec as pods

TI_LABELS = {"dag_id": "finetune_sweep", "task_id": "run_factor", "run_id": "manual__x-1a2b3c4d", "map_index": "0"}
T0 = dt.datetime(2026, 6, 7, 12, 0, tzinfo=dt.UTC)


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


# --------------------------------------------------------------------------- the readers, on client models


def _make_pod(
    name: str = "finetune-base-features-x",
    *,
    labels: dict[str, str] | None = None,
    created: dt.datetime | None = None,
    deleting: bool = False,
    status: Any = None,
) -> k8s.V1Pod:
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace="finetune",
            labels={**TI_LABELS, pods.LABEL_FACTOR: "base_features", pods.LABEL_PROFILE: "standard", **(labels or {})},
            creation_timestamp=created,
            deletion_timestamp=T0 if deleting else None,
        )
    )
    if status is not None:
        status(pod)
    return pod


def test_leftover_selector() -> None:
    request = _make_pod(labels={pods.LABEL_FACTOR: "btc_features"})

    assert leftover_selector(TI_LABELS, pod_request_obj=request) == (
        "dag_id=finetune_sweep,finetune/factor=btc_features,map_index=0,run_id=manual__x-1a2b3c4d,"
        "task_id=run_factor,!airflow-worker"
    )


def test_leftover_selector_finds_this_factors_pods_of_any_try_and_no_worker() -> None:
    kube = FakeCoreV1Api()
    try1 = kube.add_pod(_make_pod("try1", labels={"try_number": "1"}))
    try2 = kube.add_pod(_make_pod("try2", labels={"try_number": "2", pods.LABEL_PROFILE: "medium"}))
    kube.add_pod(_make_pod("other-factor", labels={pods.LABEL_FACTOR: "l2_features"}))
    kube.add_pod(_make_pod("other-task-instance", labels={"map_index": "1"}))
    kube.add_pod(_make_pod("worker", labels={"airflow-worker": "7"}))
    selector = leftover_selector({**TI_LABELS, pods.LABEL_FACTOR: "stale"}, pod_request_obj=_make_pod())

    found = kube.list_namespaced_pod("finetune", label_selector=selector).items

    assert sorted(pod.metadata.name for pod in found) == sorted([try1.metadata.name, try2.metadata.name])


def test_leftover_selector_of_a_pod_without_labels_names_no_factor() -> None:
    request = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="x"))

    assert leftover_selector({"dag_id": "d"}, pod_request_obj=request) == "dag_id=d,finetune/factor=,!airflow-worker"


@pytest.mark.parametrize(
    ("pods_in", "expected"),
    [
        pytest.param(
            [("a", 0, False), ("b", 2, False), ("c", 1, False)],
            ["b", "c", "a"],
            id="newest-first",
        ),
        pytest.param(
            [("a", 0, False), ("a", 5, False), ("b", 1, False)],
            ["b", "a"],
            id="first-of-a-name-wins",
        ),
        pytest.param(
            [("a", 0, False), ("b", 2, True), ("c", 1, False)],
            ["c", "a"],
            id="being-deleted-left-out",
        ),
        pytest.param(
            # a deleted first copy hides a later live one of the same name
            [("a", 3, True), ("a", 1, False), ("b", 2, False)],
            ["b"],
            id="first-copy-being-deleted",
        ),
        pytest.param(
            [("a", None, False), ("b", 0, False)],
            ["b", "a"],
            id="no-timestamp-last",
        ),
        pytest.param(
            # sub-second stamps (what the fake writes) against a whole second
            [("a", 0.5, False), ("b", 0, False), ("c", 1, False)],
            ["c", "a", "b"],
            id="fractional-seconds",
        ),
        pytest.param([], [], id="none"),
    ],
)
def test_newest_first(pods_in: list[tuple[str, float | None, bool]], expected: list[str]) -> None:
    made = [
        _make_pod(name, created=None if seconds is None else T0 + dt.timedelta(seconds=seconds), deleting=deleting)
        for name, seconds, deleting in pods_in
    ]

    assert [pod.metadata.name for pod in newest_first(made)] == expected


def _disrupted_running(pod: k8s.V1Pod) -> None:
    set_running(pod)
    pod.status.conditions = [k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="EvictionByEvictionAPI")]


@pytest.mark.parametrize(
    ("labels", "status", "wanted", "expected"),
    [
        pytest.param({}, set_running, "standard", True, id="running-on-this-profile"),
        pytest.param({}, set_pending, "standard", True, id="pending-on-this-profile"),
        pytest.param({}, set_running, "medium", False, id="another-profile"),
        pytest.param({}, set_running, None, False, id="profile-unknown"),
        pytest.param({"already_checked": "True"}, set_running, "standard", False, id="read-by-an-earlier-try"),
        pytest.param({"already_checked": "False"}, set_running, "standard", True, id="checked-label-not-true"),
        pytest.param({}, complete, "standard", False, id="succeeded"),
        pytest.param({}, oom_kill, "standard", False, id="failed"),
        pytest.param({}, _disrupted_running, "standard", False, id="running-but-disrupted"),
        pytest.param({}, None, "standard", False, id="no-status"),
        pytest.param({pods.LABEL_PROFILE: "STANDARD"}, set_running, "standard", False, id="label-case-matters"),
    ],
)
def test_reusable(labels: dict[str, str], status: Any, wanted: str | None, expected: bool) -> None:
    assert reusable(_make_pod(labels=labels, status=status), wanted_profile=wanted) is expected


def test_reusable_pod_without_labels_is_never_reused() -> None:
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="x"))
    set_running(pod)

    assert reusable(pod, wanted_profile="standard") is False


def test_read_unless_gone_returns_the_pod() -> None:
    kube = FakeCoreV1Api()
    pod = kube.add_pod(_make_pod(status=set_running))

    read = read_unless_gone(lambda: kube.read_namespaced_pod(pod.metadata.name, "finetune"))

    assert read == pod and read is not pod


def test_read_unless_gone_is_none_for_a_pod_gone() -> None:
    kube = FakeCoreV1Api()

    assert read_unless_gone(lambda: kube.read_namespaced_pod("gone", "finetune")) is None


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(api_error(403, "Forbidden"), id="forbidden"),
        pytest.param(api_error(500, "Internal Server Error"), id="server-error"),
        pytest.param(ApiException(status=0, reason="connection refused"), id="no-http-status"),
        pytest.param(TimeoutError("read timed out"), id="not-an-api-error"),
    ],
)
def test_read_unless_gone_raises_any_other_error(error: Exception) -> None:
    def read() -> k8s.V1Pod:
        raise error

    with pytest.raises(type(error)) as raised:
        read_unless_gone(read)

    assert raised.value is error
