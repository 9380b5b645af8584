"""How a pod attempt ended, read from what Kubernetes reports (the local backend reports alike).

:class:`PodTermination` is the one shape every backend's end is read into; the ladder decides on
it (OOM, disruption, anything else) and the attempt history records its :attr:`~PodTermination.
recorded_reason`. :func:`kubernetes_termination` reads it from a ``V1Pod`` as the API server
returns it; the pod's own words come from its log (:func:`parse_pod_log`, :func:`pod_failure_detail`:
its JSON events, its one-line refusal of bad input, its last line). The local backend builds the
same shape from its own result (``LocalPodResult.termination``).

Pure readers of a pod's status and log lines: no API call, no database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from finetune_sweep.outcomes import DEADLINE_EXCEEDED, DISRUPTED_PREFIX, NOT_CREATED_REASON, OOM_REASON
from finetune_sweep.pods.spec import ATTEMPT_ENV, LABEL_PROFILE
from finetune_sweep.sizing.quantities import parse_quantity

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

__all__ = [
    "PodTermination",
    "api_error_text",
    "disruption_reason",
    "kubernetes_termination",
    "parse_event_line",
    "parse_pod_log",
    "pod_failure_detail",
    "read_pod_log",
]

SIGKILL_EXIT_CODE = 137
# A SIGKILLed container whose last known peak reached this share of its limit is taken as an OOM
# kill even without the OOMKilled reason (some runtimes report only the signal).
OOM_NEAR_LIMIT_RATIO = 0.95
# Reasons of the DisruptionTarget condition that the API server, scheduler, kubelet and taint
# manager write (k8s.io/api/core/v1: PodReasonPreemptionByScheduler, ...).
DISRUPTION_CONDITION_REASONS = frozenset(
    {"EvictionByEvictionAPI", "PreemptionByScheduler", "TerminationByKubelet", "DeletionByTaintManager"}
)
# status.reason values of a pod the node or the cluster ended (kubelet eviction for node pressure,
# graceful node shutdown, node lost, preemption) rather than its own container.
DISRUPTION_STATUS_REASONS = frozenset({"Evicted", "Terminated", "Shutdown", "NodeShutdown", "NodeLost", "Preempting"})
# The pod's one-line refusal of bad input (finetune.cli: exit 2 before anything is written).
POD_ERROR_PREFIX = "finetune: error:"
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class PodTermination:
    """How the base container of a pod attempt ended, whatever the backend.

    :param reason: the kubelet's terminated reason (``Completed``, ``Error``, ``OOMKilled``, ...),
        the container's waiting reason (``CreateContainerConfigError``), or the pod's reason/phase.
    :param exit_code: the container's exit code, None when it never terminated.
    :param oom_killed: whether the memory limit killed it.
    :param memory_limit_bytes: the container's memory limit.
    :param peak_memory_bytes: the last known peak (None when unknown; never the limit by default).
    :param seconds: duration of the attempt, when known.
    :param detail: what the container (or the kubelet) said about the failure, when known.
    :param disrupted: the cluster ended the pod (not its own container): retried on the same profile.
    :param profile: the profile label of the pod that ran (upper case), when known.
    :param attempt: the ``FINETUNE_ATTEMPT`` of the pod that ran (a reattached pod keeps the
        try number that created it, and records its own rows under it), when known.
    """

    reason: str
    exit_code: int | None
    oom_killed: bool
    memory_limit_bytes: int | None
    peak_memory_bytes: int | None
    seconds: float | None = None
    detail: str | None = None
    disrupted: bool = False
    profile: str | None = None
    attempt: int | None = None

    @property
    def exit_reason(self) -> str:
        """``OOMKilled``, ``Disrupted: <reason>``, ``Error: exit N``, or the reason."""
        if self.oom_killed:
            return OOM_REASON
        if self.disrupted:
            return f"{DISRUPTED_PREFIX}{self.reason}"
        if self.reason == DEADLINE_EXCEEDED:
            # the pod's bound stopped it: its container's exit code (143/137) says nothing more
            return DEADLINE_EXCEEDED
        if self.exit_code is not None:
            return f"Error: exit {self.exit_code}"
        return self.reason

    @property
    def recorded_reason(self) -> str:
        """What ``exit_reason`` records: :attr:`exit_reason` with what the pod said (the gate shows it)."""
        if self.oom_killed or not self.detail:
            return self.exit_reason
        return f"{self.exit_reason}: {self.detail}"[:MAX_REASON_CHARS]


def parse_event_line(line: str) -> dict[str, Any] | None:
    """The pod's JSON event on this log line (DESIGN 4.4: an object with an ``event`` name), else None.

    :param line: one line of the container's output.
    """
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:  # a log line that merely starts with a brace
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def parse_pod_log(lines: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The pod's JSON events by name (the last of each) and its non-empty lines.

    :param lines: log lines of the base container.
    """
    events: dict[str, dict[str, Any]] = {}
    tail: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        tail.append(line)
        event = parse_event_line(line)
        if event is not None:
            events[event["event"]] = event
    return events, tail


def pod_failure_detail(events: Mapping[str, Mapping[str, Any]], tail: list[str]) -> str | None:
    """What a pod said about its failure: its ``run_error`` / ``run_finished`` event, else its
    one-line refusal (``finetune: error: ...``, exit 2), else its last output line.

    :param events: the pod's JSON events by name.
    :param tail: the last lines of its output.
    """
    said = (events.get("run_error") or {}).get("error") or (events.get("run_finished") or {}).get("exit_reason")
    if said:
        return str(said)
    for line in reversed(tail):
        if line.strip().startswith(POD_ERROR_PREFIX):
            return line.strip()
    return tail[-1].strip() if tail and tail[-1].strip() else None


def disruption_reason(pod: k8s.V1Pod | None) -> str | None:
    """Why the cluster ended this pod, or None when it did not.

    The ``DisruptionTarget`` condition (status True) that the eviction API, the scheduler
    (preemption), the kubelet (node pressure, node shutdown) and the taint manager write, else a
    pod ``status.reason`` such as ``Evicted``.

    :param pod: the pod as read from the API server.
    """
    status = pod.status if pod is not None else None
    if status is None:
        return None
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and str(condition.status) == "True":
            return condition.reason or "DisruptionTarget"
    if status.reason in DISRUPTION_STATUS_REASONS:
        return status.reason
    return None


def kubernetes_termination(
    pod: k8s.V1Pod | None,
    *,
    container_name: str = "base",
    peak_memory_bytes: int | None = None,
    detail: str | None = None,
) -> PodTermination:
    """Read a pod's status the way the ladder needs it: OOM, disruption, or another failure.

    OOM when the container's ``state.terminated.reason`` (or ``lastState``) is ``OOMKilled``, or
    when it was SIGKILLed (exit 137) with its last known peak at or near the limit and the cluster
    did not disrupt it. The peak stays unknown (None) when the pod did not report one.

    :param pod: the pod as last read from the API server; None if never created.
    :param container_name: the base container.
    :param peak_memory_bytes: the peak the pod reported, if any (its ``pod_usage`` event).
    :param detail: what the pod said (its events or last line), if known.
    """
    if pod is None:
        return PodTermination(NOT_CREATED_REASON, None, False, None, peak_memory_bytes, detail=detail)
    labels = (pod.metadata.labels if pod.metadata else None) or {}
    profile = labels.get(LABEL_PROFILE)
    profile = profile.upper() if profile else None
    limit = attempt = None
    for container in (pod.spec.containers if pod.spec else None) or []:
        if container.name != container_name:
            continue
        if container.resources and container.resources.limits:
            memory = container.resources.limits.get("memory")
            limit = parse_quantity(str(memory)) if memory is not None else None
        for var in container.env or []:
            if var.name == ATTEMPT_ENV and str(var.value or "").isdigit():
                attempt = int(var.value)
    status = pod.status
    disrupted = disruption_reason(pod)
    terminated = waiting = None
    for container_status in (status.container_statuses if status else None) or []:
        if container_status.name != container_name:
            continue
        for state in (container_status.state, container_status.last_state):
            if state is not None and state.terminated is not None:
                terminated = state.terminated
                break
        if terminated is None and container_status.state is not None:
            waiting = container_status.state.waiting
    base = PodTermination(
        "Unknown", None, False, limit, peak_memory_bytes, detail=detail, profile=profile, attempt=attempt
    )
    if terminated is None:
        if disrupted:
            return replace(
                base, reason=disrupted, disrupted=True, detail=detail or (status.message if status else None)
            )
        if waiting is not None and waiting.reason:
            # never started: CreateContainerConfigError (missing Secret), image pull errors ...
            return replace(base, reason=waiting.reason, detail=detail or waiting.message)
        reason = (status.reason if status else None) or (status.phase if status else None) or "Unknown"
        return replace(base, reason=reason, detail=detail or (status.message if status else None))
    reason = terminated.reason or ("Completed" if terminated.exit_code == 0 else "Error")
    if reason == OOM_REASON:
        return replace(base, reason=OOM_REASON, exit_code=terminated.exit_code, oom_killed=True)
    if disrupted:
        return replace(
            base,
            reason=disrupted,
            exit_code=terminated.exit_code,
            disrupted=True,
            detail=detail or (status.message or None),
        )
    if status is not None and status.reason == DEADLINE_EXCEEDED:
        # activeDeadlineSeconds: the pod's reason; its container merely shows the kill (143/137)
        return replace(
            base, reason=DEADLINE_EXCEEDED, exit_code=terminated.exit_code, detail=status.message or detail or None
        )
    near_limit = (
        terminated.exit_code == SIGKILL_EXIT_CODE
        and limit is not None
        and peak_memory_bytes is not None
        and peak_memory_bytes >= OOM_NEAR_LIMIT_RATIO * limit
    )
    if near_limit:
        return replace(base, reason=OOM_REASON, exit_code=terminated.exit_code, oom_killed=True)
    return replace(
        base, reason=reason, exit_code=terminated.exit_code, detail=detail or (terminated.message or "").strip() or None
    )


def api_error_text(exc: BaseException) -> str:
    """One line for an error: an API error's status, reason and the API server's own message.

    :param exc: any error; one with an HTTP ``status`` (``ApiException``) is read as the API
        server's answer (its JSON ``Status`` body carries the message), any other as its text.
    """
    status = _http_status(exc)
    if status is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    text = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    try:
        message = json.loads(getattr(exc, "body", None) or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{text}: {message}" if message else text


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def read_pod_log(
    client: Any, pod: k8s.V1Pod, *, container: str, tail_lines: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The last ``tail_lines`` of a container's log, read from the API server, as :func:`parse_pod_log` gives them.

    :param client: a ``CoreV1Api``.
    :param pod: the pod (its name and namespace).
    :param container: the container whose log is read.
    :param tail_lines: how many lines from the end.
    """
    text = client.read_namespaced_pod_log(
        name=pod.metadata.name, namespace=pod.metadata.namespace, container=container, tail_lines=tail_lines
    )
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return parse_pod_log(str(text or "").splitlines())
