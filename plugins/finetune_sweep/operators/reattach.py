"""Reattachment after a worker crash: the pods earlier tries of a task instance left, and the one a try may reuse.

The provider reattaches to any pod with the task instance's labels. A factor's retry must not
inherit just any of them: after an OOM it runs on another profile, and an old pod may have
OOMed, been disrupted, or already been read by an earlier try. :func:`reusable` says whether a
leftover still runs on this try's profile; the operator deletes (or, for debugging, keeps and
labels checked) every other one and creates a fresh pod.

Readers of pods and of the provider's stored pod identity; the operator makes the calls that
change the cluster, best effort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import POD_IDENTIFIER_STATE_KEY, KubernetesPodOperator
from kubernetes.client.exceptions import ApiException

from finetune_sweep.pods.spec import LABEL_FACTOR, LABEL_PROFILE
from finetune_sweep.pods.termination import disruption_reason

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import models as k8s

__all__ = ["leftover_selector", "newest_first", "read_unless_gone", "reusable", "stored_pod"]


def read_unless_gone(read: Callable[[], k8s.V1Pod]) -> k8s.V1Pod | None:
    """The pod ``read`` returns; None when the API server no longer has it (404).

    :param read: one read of a pod from the API server.
    :raises ApiException: any other API error.
    """
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def stored_pod(hook: KubernetesHook, store: Any) -> k8s.V1Pod | None:
    """The pod whose identity an earlier try stored (the provider's task state), whatever its
    labels; None when none was stored or the pod is gone.

    :param hook: the operator's Kubernetes hook.
    :param store: the task state store of the context, or None.
    """
    stored = store.get(POD_IDENTIFIER_STATE_KEY) if store is not None else None
    if not isinstance(stored, Mapping) or not stored.get("name") or not stored.get("namespace"):
        return None
    return read_unless_gone(lambda: hook.get_pod(str(stored["name"]), str(stored["namespace"])))


def leftover_selector(ti_labels: Mapping[str, str], *, pod_request_obj: k8s.V1Pod) -> str:
    """The label selector of this task instance's factor pods of any try (never a worker pod).

    :param ti_labels: the task instance's pod labels without the try number.
    :param pod_request_obj: this try's pod (its factor label).
    """
    labels = {**ti_labels, LABEL_FACTOR: (pod_request_obj.metadata.labels or {}).get(LABEL_FACTOR, "")}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) + ",!airflow-worker"


def newest_first(pods: Iterable[k8s.V1Pod]) -> list[k8s.V1Pod]:
    """``pods`` once each (the first of a name wins), those being deleted left out, newest first.

    :param pods: pods as read from the API server.
    """
    found: dict[str, k8s.V1Pod] = {}
    for pod in pods:
        found.setdefault(pod.metadata.name, pod)
    alive = [pod for pod in found.values() if pod.metadata.deletion_timestamp is None]
    return sorted(alive, key=lambda pod: str(pod.metadata.creation_timestamp or ""), reverse=True)


def reusable(pod: k8s.V1Pod, *, wanted_profile: str | None) -> bool:
    """Whether a pod of an earlier try may serve this try: still starting or running, on this try's
    profile, not disrupted, and not already read by an earlier try (labelled checked).

    :param pod: a leftover pod.
    :param wanted_profile: this try's profile label (lower case), None when unknown (never reused).
    """
    labels = pod.metadata.labels or {}
    phase = pod.status.phase if pod.status else None
    return (
        wanted_profile is not None
        and labels.get(LABEL_PROFILE) == wanted_profile
        and labels.get(KubernetesPodOperator.POD_CHECKED_KEY) != "True"
        and phase in ("Pending", "Running")
        and disruption_reason(pod) is None
    )
