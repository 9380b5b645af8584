"""How a pod attempt ended, read from the pod status the API server returns: OOM (by reason or by
the peak near the limit), disruption, deadline, or another failure."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from fake_kube import FakeCoreV1Api, api_error, set_disrupted
from finetune_sweep.pods.termination import (
    PodTermination,
    api_error_text,
    disruption_reason,
    kubernetes_termination,
    read_pod_log,
)

MI = 2**20


def _pod_with_status(
    *, reason: str | None, exit_code: int | None, memory: str = "8Gi", last_state: bool = False
) -> k8s.V1Pod:
    terminated = None if exit_code is None else k8s.V1ContainerStateTerminated(reason=reason, exit_code=exit_code)
    state = k8s.V1ContainerState(terminated=terminated)
    status = k8s.V1ContainerStatus(
        name="base",
        image="img",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState() if last_state else state,
        last_state=state if last_state else None,
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="finetune-base-features-x", namespace="finetune"),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits={"memory": memory}))]
        ),
        status=k8s.V1PodStatus(
            phase="Failed" if exit_code else "Pending",
            reason=None if exit_code is not None else "Unschedulable",
            container_statuses=[status] if exit_code is not None else None,
        ),
    )


@pytest.mark.parametrize(
    ("pod_kwargs", "peak", "oom", "exit_reason", "expected_peak"),
    [
        # the peak is unknown unless the pod reported one: never replaced by the limit
        pytest.param({"reason": "OOMKilled", "exit_code": 137}, None, True, "OOMKilled", None, id="oomkilled"),
        pytest.param(
            {"reason": "OOMKilled", "exit_code": 137, "last_state": True},
            None,
            True,
            "OOMKilled",
            None,
            id="last-state",
        ),
        pytest.param(
            {"reason": "Error", "exit_code": 137},
            8 * 2**30 - MI,
            True,
            "OOMKilled",
            8 * 2**30 - MI,
            id="137-near-limit",
        ),
        pytest.param(
            {"reason": "Error", "exit_code": 137}, None, False, "Error: exit 137", None, id="137-peak-unknown"
        ),
        pytest.param({"reason": "Error", "exit_code": 137}, 2**30, False, "Error: exit 137", 2**30, id="137-far-below"),
        pytest.param({"reason": "Error", "exit_code": 1}, None, False, "Error: exit 1", None, id="error"),
        pytest.param({"reason": None, "exit_code": None}, None, False, "Unschedulable", None, id="never-ran"),
    ],
)
def test_kubernetes_termination(
    pod_kwargs: dict[str, Any], peak: int | None, oom: bool, exit_reason: str, expected_peak: int | None
) -> None:
    termination = kubernetes_termination(_pod_with_status(**pod_kwargs), peak_memory_bytes=peak)

    assert termination.oom_killed is oom
    assert termination.exit_reason == exit_reason
    assert termination.peak_memory_bytes == expected_peak
    assert termination.memory_limit_bytes == 8 * 2**30


def test_kubernetes_termination_of_a_pod_never_created() -> None:
    assert kubernetes_termination(None) == PodTermination("PodNotCreated", None, False, None, None)


@pytest.mark.parametrize(
    ("condition_reason", "status_reason", "expected"),
    [
        pytest.param("EvictionByEvictionAPI", None, "EvictionByEvictionAPI", id="eviction-api-drain"),
        pytest.param("PreemptionByScheduler", None, "PreemptionByScheduler", id="preempted"),
        pytest.param("TerminationByKubelet", "Evicted", "TerminationByKubelet", id="kubelet-node-pressure"),
        pytest.param("TerminationByKubelet", "Terminated", "TerminationByKubelet", id="node-shutdown"),
        pytest.param("DeletionByTaintManager", None, "DeletionByTaintManager", id="noexecute-taint"),
        pytest.param(None, "Evicted", "Evicted", id="old-kubelet-evicted"),
    ],
)
def test_disrupted_pods_are_recognised(condition_reason: str | None, status_reason: str | None, expected: str) -> None:
    pod = _pod_with_status(reason="Error", exit_code=137)
    set_disrupted(pod, condition_reason=condition_reason, status_reason=status_reason)

    termination = kubernetes_termination(pod)

    assert disruption_reason(pod) == expected
    assert termination.disrupted and not termination.oom_killed
    assert termination.exit_reason == f"Disrupted: {expected}"


def test_an_oom_kill_is_never_a_disruption_and_a_plain_error_is_neither() -> None:
    oom = _pod_with_status(reason="OOMKilled", exit_code=137)
    oom.status.conditions = [k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="TerminationByKubelet")]
    failed = _pod_with_status(reason="Error", exit_code=1)
    # a condition that is not (or no longer) true does not count
    failed.status.conditions = [
        k8s.V1PodCondition(type="DisruptionTarget", status="False", reason="PreemptionByScheduler")
    ]

    assert kubernetes_termination(oom).oom_killed and not kubernetes_termination(oom).disrupted
    assert disruption_reason(failed) is None and not kubernetes_termination(failed).disrupted


def test_kubernetes_deadline_exceeded_is_the_pods_reason_not_an_oom() -> None:
    # what the kubelet writes: phase Failed, reason DeadlineExceeded; the container shows the kill
    pod = _pod_with_status(reason="Error", exit_code=137)
    pod.status.reason = "DeadlineExceeded"
    pod.status.message = "Pod was active on the node longer than the specified deadline"

    termination = kubernetes_termination(pod, peak_memory_bytes=8 * 2**30 - MI)

    assert (termination.reason, termination.exit_reason, termination.oom_killed) == (
        "DeadlineExceeded",
        "DeadlineExceeded",
        False,
    )
    assert termination.detail == "Pod was active on the node longer than the specified deadline"


# --------------------------------------------------------------------------- the pod's log and API errors

USAGE = '{"event": "pod_usage", "peak_memory_bytes": 1024}'
FINISHED = '{"event": "run_finished", "exit_reason": "completed"}'


def _log_pod(name: str = "finetune-base-features-x") -> k8s.V1Pod:
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, namespace="finetune"))


class _BytesLogClient:
    """A CoreV1Api whose log read answers bytes (as with ``_preload_content=False`` data)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data
        self.calls: list[dict[str, Any]] = []

    def read_namespaced_pod_log(self, **kwargs: Any) -> bytes | None:
        self.calls.append(kwargs)
        return self.data


@pytest.mark.parametrize(
    ("lines", "tail_lines", "expected_events", "expected_tail"),
    [
        pytest.param(
            ["loading", USAGE, "", FINISHED],
            100,
            {"pod_usage": json.loads(USAGE), "run_finished": json.loads(FINISHED)},
            ["loading", USAGE, FINISHED],
            id="events-parsed-blank-lines-dropped",
        ),
        pytest.param(
            ["first", USAGE, "last"],
            1,
            {},
            ["last"],
            id="only-the-tail-is-read",
        ),
        pytest.param(
            ['{"event": "pod_usage", "peak_memory_bytes": 1}', USAGE],
            100,
            {"pod_usage": json.loads(USAGE)},
            ['{"event": "pod_usage", "peak_memory_bytes": 1}', USAGE],
            id="last-event-of-a-name-wins",
        ),
        pytest.param([], 100, {}, [], id="empty-log"),
    ],
)
def test_read_pod_log_from_the_api_server(
    lines: list[str], tail_lines: int, expected_events: dict[str, Any], expected_tail: list[str]
) -> None:
    kube = FakeCoreV1Api()
    pod = kube.add_pod(_log_pod())
    kube.logs[pod.metadata.name] = lines

    assert read_pod_log(kube, pod, container="base", tail_lines=tail_lines) == (expected_events, expected_tail)


@pytest.mark.parametrize(
    ("data", "expected_tail"),
    [
        pytest.param(f"started\n{USAGE}\n".encode(), ["started", USAGE], id="utf8-bytes"),
        pytest.param(b"caf\xc3\xa9\r\nbad \xff byte\n", ["caf\u00e9", "bad \ufffd byte"], id="crlf-and-invalid-utf8"),
        pytest.param(None, [], id="no-log"),
    ],
)
def test_read_pod_log_decodes_bytes(data: bytes | None, expected_tail: list[str]) -> None:
    client = _BytesLogClient(data)

    events, tail = read_pod_log(client, _log_pod(), container="base", tail_lines=50)

    assert tail == expected_tail
    assert events == ({"pod_usage": json.loads(USAGE)} if USAGE in expected_tail else {})
    assert client.calls == [
        {"name": "finetune-base-features-x", "namespace": "finetune", "container": "base", "tail_lines": 50}
    ]


def test_read_pod_log_of_a_pod_gone_raises_the_api_error() -> None:
    with pytest.raises(ApiException) as raised:
        read_pod_log(FakeCoreV1Api(), _log_pod(), container="base", tail_lines=10)

    assert raised.value.status == 404


def _http_error(status: int, reason: str, body: bytes | str | None) -> ApiException:
    """An ApiException as the client raises it from an HTTP response (its body is the response data)."""
    response = SimpleNamespace(status=status, reason=reason, data=body, getheaders=lambda: {})
    return ApiException(http_resp=response)


STATUS_BODY = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": 'pods "finetune-x" is forbidden: exceeded quota: finetune, requested: memory=24Gi',
        "reason": "Forbidden",
        "code": 403,
    }
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(
            _http_error(403, "Forbidden", STATUS_BODY.encode()),
            'HTTP 403 Forbidden: pods "finetune-x" is forbidden: exceeded quota: finetune, requested: memory=24Gi',
            id="status-body-bytes",
        ),
        pytest.param(
            _http_error(409, "Conflict", '{"message": "already exists"}'),
            "HTTP 409 Conflict: already exists",
            id="status-body-str",
        ),
        pytest.param(api_error(404, "NotFound"), "HTTP 404 NotFound", id="no-body"),
        pytest.param(
            _http_error(502, "Bad Gateway", b"<html>bad gateway</html>"), "HTTP 502 Bad Gateway", id="html-body"
        ),
        pytest.param(
            _http_error(500, "Internal Server Error", b"[1, 2]"),
            "HTTP 500 Internal Server Error",
            id="json-not-an-object",
        ),
        pytest.param(_http_error(422, "", b"{}"), "HTTP 422", id="no-reason-no-message"),
        pytest.param(ValueError("bad\n   value  here"), "bad value here", id="plain-exception-one-line"),
        pytest.param(RuntimeError(), "RuntimeError", id="plain-exception-without-text"),
    ],
)
def test_api_error_text(exc: BaseException, expected: str) -> None:
    assert api_error_text(exc) == expected
