"""A fake CoreV1Api: just enough of the Kubernetes API for the KubernetesPodOperator's real code.

The provider's ``execute``, ``trigger_reentry``, ``cleanup`` and ``on_kill`` run unchanged; only
the client they get from ``KubernetesHook.core_v1_client`` is this object. Pods are stored as
``V1Pod`` models deserialized from what the operator submitted (as the API server would), and
their status is written by a scripted "kubelet" in the shapes the kubelet, the scheduler and the
eviction API write (container states, ``DisruptionTarget`` conditions, status reasons).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

Kubelet = Callable[[k8s.V1Pod], None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def api_error(status: int, reason: str) -> ApiException:
    """An ApiException as the client raises it for an HTTP error status."""
    return ApiException(status=status, reason=reason)


def _container_status(name: str, state: k8s.V1ContainerState) -> k8s.V1ContainerStatus:
    return k8s.V1ContainerStatus(
        name=name, image="img", image_id="", ready=False, restart_count=0, state=state, started=False
    )


def set_terminated(pod: k8s.V1Pod, *, reason: str, exit_code: int, message: str | None = None) -> None:
    """The base container terminated (the kubelet's shape: ``state.terminated`` with a reason)."""
    pod.status = k8s.V1PodStatus(
        phase="Succeeded" if exit_code == 0 else "Failed",
        conditions=[k8s.V1PodCondition(type="PodScheduled", status="True")],
        container_statuses=[
            _container_status(
                "base",
                k8s.V1ContainerState(
                    terminated=k8s.V1ContainerStateTerminated(
                        reason=reason, exit_code=exit_code, message=message, started_at=_now(), finished_at=_now()
                    )
                ),
            )
        ],
    )


def set_running(pod: k8s.V1Pod) -> None:
    """The base container runs."""
    pod.status = k8s.V1PodStatus(
        phase="Running",
        conditions=[k8s.V1PodCondition(type="PodScheduled", status="True")],
        container_statuses=[
            _container_status("base", k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(started_at=_now())))
        ],
    )


def set_pending(pod: k8s.V1Pod) -> None:
    """Not scheduled yet."""
    pod.status = k8s.V1PodStatus(phase="Pending")


def set_waiting(pod: k8s.V1Pod, *, reason: str, message: str) -> None:
    """Scheduled, the container cannot start (e.g. ``CreateContainerConfigError``)."""
    pod.status = k8s.V1PodStatus(
        phase="Pending",
        conditions=[k8s.V1PodCondition(type="PodScheduled", status="True")],
        container_statuses=[
            _container_status(
                "base", k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=reason, message=message))
            )
        ],
    )


def set_disrupted(pod: k8s.V1Pod, *, condition_reason: str | None, status_reason: str | None = None) -> None:
    """What the cluster writes on a pod it ends: a ``DisruptionTarget`` condition (API server /
    scheduler / kubelet / taint manager), the container killed (137), and for a kubelet eviction
    ``status.reason = Evicted`` with its message."""
    set_terminated(pod, reason="Error", exit_code=137)
    conditions = [k8s.V1PodCondition(type="PodScheduled", status="True")]
    if condition_reason:
        conditions.append(
            k8s.V1PodCondition(
                type="DisruptionTarget",
                status="True",
                reason=condition_reason,
                message={
                    "EvictionByEvictionAPI": "Eviction API: evicting",
                    "PreemptionByScheduler": "default-scheduler: preempting to accommodate a higher priority pod",
                    "TerminationByKubelet": "Pod was terminated in response to imminent node shutdown.",
                    "DeletionByTaintManager": "Taint manager: deleting due to NoExecute taint",
                }.get(condition_reason, condition_reason),
            )
        )
    pod.status.conditions = conditions
    if status_reason:
        pod.status.reason = status_reason
        pod.status.message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi."


@dataclass
class _Calls:
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)


class FakeCoreV1Api:
    """In-memory pods of one cluster; methods named and called like ``kubernetes.client.CoreV1Api``.

    :param kubelet: sets a created pod's status (default: it runs and completes successfully).
    """

    def __init__(self, kubelet: Kubelet | None = None) -> None:
        self.api_client = ApiClient()
        self.pods: dict[tuple[str, str], k8s.V1Pod] = {}
        self.logs: dict[str, list[str]] = {}
        self.kubelet: Kubelet = kubelet or (lambda pod: set_terminated(pod, reason="Completed", exit_code=0))
        self.default_log: list[str] = []
        self.calls = _Calls()
        self.patch_error: ApiException | None = None
        self.create_error: ApiException | None = None
        # once set, pod reads fail with this after the provider has listed a failed pod's events
        # (that is, during the operator's own classification)
        self.read_error_after_events: Exception | None = None
        # status changes applied when a pod's log is first followed (the container ends meanwhile)
        self.on_log_read: dict[str, Kubelet] = {}
        self._events_listed = False
        self._counter = 0

    # -- what tests use

    def add_pod(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        """Put a pod into the cluster directly (a leftover of an earlier try)."""
        self._counter += 1
        pod.metadata.creation_timestamp = pod.metadata.creation_timestamp or _now() - dt.timedelta(minutes=5)
        pod.metadata.uid = pod.metadata.uid or f"uid-{self._counter}"
        self.pods[(pod.metadata.namespace, pod.metadata.name)] = pod
        return pod

    def only_pod(self) -> k8s.V1Pod:
        (pod,) = self.pods.values()
        return pod

    def update(self, name: str, change: Kubelet) -> None:
        """Change a stored pod's status (the kubelet reporting later)."""
        for (_, pod_name), pod in self.pods.items():
            if pod_name == name:
                change(pod)
                return
        raise KeyError(name)

    # -- pods

    def create_namespaced_pod(self, body: Any, namespace: str, **_: Any) -> k8s.V1Pod:
        if self.create_error is not None:
            raise self.create_error
        pod = self.api_client._ApiClient__deserialize(copy.deepcopy(body), "V1Pod")  # type: ignore[attr-defined]
        pod.metadata.namespace = namespace
        self._counter += 1
        pod.metadata.creation_timestamp = _now() + dt.timedelta(microseconds=self._counter)
        pod.metadata.uid = f"uid-{self._counter}"
        if (namespace, pod.metadata.name) in self.pods:
            raise api_error(409, "AlreadyExists")
        self.kubelet(pod)
        self.pods[(namespace, pod.metadata.name)] = pod
        self.calls.created.append(pod.metadata.name)
        return copy.deepcopy(pod)

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Pod:
        if self._events_listed and self.read_error_after_events is not None:
            raise self.read_error_after_events
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise api_error(404, "NotFound")
        return copy.deepcopy(pod)

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_: Any) -> k8s.V1PodList:
        items = [
            copy.deepcopy(pod)
            for (ns, _name), pod in self.pods.items()
            if ns == namespace and _matches(pod.metadata.labels or {}, label_selector)
        ]
        return k8s.V1PodList(items=items)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **_: Any) -> k8s.V1Pod:
        if self.patch_error is not None:
            raise self.patch_error
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise api_error(404, "NotFound")
        pod.metadata.labels = {**(pod.metadata.labels or {}), **body["metadata"]["labels"]}
        self.calls.patched.append(name)
        return copy.deepcopy(pod)

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None, **_: Any) -> k8s.V1Status:
        if self.pods.pop((namespace, name), None) is None:
            raise api_error(404, "NotFound")
        self.calls.deleted.append(name)
        return k8s.V1Status(status="Success")

    # -- events and logs

    def list_namespaced_event(self, namespace: str, field_selector: str = "", **_: Any) -> k8s.CoreV1EventList:
        name = field_selector.partition("=")[2]
        pod = self.pods.get((namespace, name))
        if pod is not None and pod.status is not None and pod.status.phase in ("Failed", "Pending"):
            self._events_listed = True
        return k8s.CoreV1EventList(items=[], metadata=k8s.V1ListMeta(resource_version="1"))

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        if self._events_listed and self.read_error_after_events is not None:
            raise self.read_error_after_events
        if (namespace, name) not in self.pods:
            raise api_error(404, "NotFound")
        lines = self.logs.get(name, self.default_log)
        change = self.on_log_read.pop(name, None)
        if change is not None:
            change(self.pods[(namespace, name)])
        if kwargs.get("tail_lines"):
            lines = lines[-int(kwargs["tail_lines"]) :]
        if kwargs.get("_preload_content", True):
            return "".join(line + "\n" for line in lines)
        stamp = _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        prefix = f"{stamp} " if kwargs.get("timestamps") else ""
        return _LogStream([(prefix + line + "\n").encode() for line in lines])


class _LogStream:
    """A urllib3 response as far as the provider's log readers use it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.data = b"".join(chunks)

    def stream(self, amt: Any = None, decode_content: bool = True) -> Any:
        yield from self._chunks

    def __iter__(self) -> Any:
        return iter(self._chunks)

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: ``k=v``, ``k!=v``, ``!k``, ``k``."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True
