"""FactorPodOperator: the KubernetesPodOperator of one factor, with its OOM ladder and backends.

What it adds to the KubernetesPodOperator (DESIGN sections 3, 6 and 7):

- **Plain-dict resources.** ``container_resources`` arriving as a dict (``expand_kwargs`` entries
  travel through XCom as JSON) is turned into ``V1ResourceRequirements`` before the pod is built.
- **Backend.** ``FINETUNE_POD_BACKEND`` (read at execute time): ``kubernetes`` (default) submits
  the pod as the KubernetesPodOperator does (sync or deferrable); ``local`` builds the very same
  V1Pod offline (``build_pod_request_obj(context, dry_run=True)``) and runs it with
  :mod:`finetune_sweep.local.pod_runner`, a one-container kubelet emulation.
- **OOM ladder** (``ladder=True``, the ``run_factor`` pods). The OOM count of a factor's round of
  tries lives with the task: Airflow's task state store (key :data:`LADDER_STATE_KEY`, shared by
  the tries of one task instance), written only when an OOM (or a disruption) is classified; where
  no store is available, the attempts recorded in ``finetune_pod_attempts`` are counted instead.
  A try runs on its planned profile moved one step up ``STANDARD -> MEDIUM -> HEAVY`` per OOM so
  far, never by ``try_number``: a zombie, a heartbeat timeout or a cleared running task retries on
  the same profile. Clearing a task starts a new round (Airflow raises ``max_tries``) on the
  planned profile. Resources, the profile label, node selector, tolerations, affinity and the
  ``FINETUNE_PROFILE`` / ``FINETUNE_ATTEMPT`` env follow that profile, from the ``profiles`` the
  plan resolved once for the run (``FINETUNE_PROFILES`` is not re-read on the worker).
- **Every failure classified.** The pod that actually ran decides (its profile label and memory
  limit are what is recorded): an OOM below the top profile raises a retryable
  :class:`PodOOMKilled`; a pod the cluster disrupted (condition ``DisruptionTarget``, or status
  reason ``Evicted``, or deleted under the task) raises a retryable :class:`PodDisrupted` on the
  same profile, at most ``FINETUNE_DISRUPTION_RETRIES`` times; anything else, an OOM on the top
  profile included, raises :class:`PodFailed` (no retry). Errors while classifying or recording
  (API errors, database errors, anything) are logged and never change that outcome.
- **Reattachment safety.** A pod left by an earlier try (worker crash) is reused only while it is
  still running on this try's profile; any other leftover of this task instance is deleted and a
  fresh pod created (kept, and labelled checked, when ``FINETUNE_KEEP_FAILED_PODS`` asks for it).
- **A container that cannot be configured** (``CreateContainerConfigError``: a missing DSN Secret
  or key) fails the start after ``FINETUNE_CONFIG_ERROR_GRACE_SECONDS`` (30) with the kubelet's
  message, not after the startup timeout (deferrable: :class:`FactorPodTrigger` watches the same).
- **Killed tasks** (``on_kill``: worker shutdown, a user marking the task) are recorded as
  ``Killed``, not as a pod failure; while deferred, by the trigger
  (:class:`finetune_sweep.operators.trigger.FactorPodTrigger`, which :meth:`defer` puts in place of
  the provider's). Failed pods are deleted once their logs and status were read
  (``FINETUNE_KEEP_FAILED_PODS=true`` keeps them for debugging).
- **Mapped-instance names.** ``execute`` puts the factor into the context as ``factor``; the DAG
  uses ``map_index_template="{{ task.factor }}"``.

The run id recorded with an attempt is the ``--run-id`` of the pod arguments (what the pod itself
writes under), else the Airflow run id. The Airflow side writes with :mod:`finetune_sweep.db.dsn`
(psycopg only): a worker image never needs the pod package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
)
from kubernetes.client import models as k8s

from finetune_sweep.pods.startup import CONFIG_ERROR_REASON, StartWatching
from finetune_sweep.sizing.profiles import OOM_REASON

if TYPE_CHECKING:
    from airflow.sdk import Context

    from finetune_sweep.local.pod_runner import LocalPodResult, LocalPodRunner
    from finetune_sweep.settings import Settings
    from finetune_sweep.sizing.profiles import PodProfile

__all__ = [
    "FactorPodOperator",
    "LadderState",
    "PodDisrupted",
    "PodFailed",
    "PodOOMKilled",
    "PodTermination",
    "attempt_profile",
    "disruption_reason",
    "kubernetes_termination",
    "parse_pod_log",
    "round_start",
]

SIGKILL_EXIT_CODE = 137
# A SIGKILLed container whose last known peak reached this share of its limit is taken as an OOM
# kill even without the OOMKilled reason (some runtimes report only the signal).
OOM_NEAR_LIMIT_RATIO = 0.95
PROFILE_ENV = "FINETUNE_PROFILE"
ATTEMPT_ENV = "FINETUNE_ATTEMPT"
# The Airflow run of the attempt: with the try number it keys the attempt history (V007).
AIRFLOW_RUN_ENV = "FINETUNE_AIRFLOW_RUN_ID"
# The pod's status reason past its activeDeadlineSeconds (the local backend reports it alike).
DEADLINE_EXCEEDED = "DeadlineExceeded"
# The task state store key of the ladder (shared by the tries of one mapped task instance).
LADDER_STATE_KEY = "finetune_ladder"
# Reasons of the DisruptionTarget condition that the API server, scheduler, kubelet and taint
# manager write (k8s.io/api/core/v1: PodReasonPreemptionByScheduler, ...).
DISRUPTION_CONDITION_REASONS = frozenset(
    {"EvictionByEvictionAPI", "PreemptionByScheduler", "TerminationByKubelet", "DeletionByTaintManager"}
)
# status.reason values of a pod the node or the cluster ended (kubelet eviction for node pressure,
# graceful node shutdown, node lost, preemption) rather than its own container.
DISRUPTION_STATUS_REASONS = frozenset({"Evicted", "Terminated", "Shutdown", "NodeShutdown", "NodeLost", "Preempting"})
DELETED_REASON = "PodDeleted"
KILLED_REASON = "Killed"
# How much of the pod's log is read back after a failure for its own events (pod_usage, run_error).
LOG_TAIL_LINES = 200
# The pod's one-line refusal of bad input (finetune.cli: exit 2 before anything is written).
POD_ERROR_PREFIX = "finetune: error:"
MAX_REASON_CHARS = 500


class _Classified(AirflowException):
    """A failure this operator already classified and recorded (never classified twice)."""


class PodOOMKilled(_Classified):
    """The pod was OOM-killed below the top profile: retried one profile up."""


class PodDisrupted(_Classified):
    """The cluster disrupted the pod (eviction, preemption, node shutdown): retried on the same profile."""


class PodFailed(_Classified, AirflowFailException):
    """Any other failure (an OOM on the top profile included): the factor fails without retry."""


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
            return f"Disrupted: {self.reason}"
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

    @classmethod
    def from_local(cls, result: LocalPodResult) -> PodTermination:
        """The termination of a local pod run.

        :param result: what :func:`finetune_sweep.local.pod_runner.run_pod_locally` returned.
        """
        return cls(
            reason=result.reason,
            exit_code=result.exit_code,
            oom_killed=result.oom_killed,
            memory_limit_bytes=result.memory_limit_bytes,
            peak_memory_bytes=result.peak_memory_bytes,
            seconds=result.seconds,
            detail=result.message or pod_failure_detail(result.events, list(result.log_tail)),
        )


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


def parse_pod_log(lines: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The pod's JSON events by name (the last of each) and its non-empty lines.

    :param lines: log lines of the base container.
    """
    from finetune_sweep.local.pod_runner import parse_event_line

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
    from finetune_sweep.pods.spec import LABEL_PROFILE
    from finetune_sweep.sizing.profiles import parse_quantity

    if pod is None:
        return PodTermination("PodNotCreated", None, False, None, peak_memory_bytes, detail=detail)
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
            return replace(base, reason=disrupted, disrupted=True, detail=detail or (status.message if status else None))
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
            base, reason=disrupted, exit_code=terminated.exit_code, disrupted=True, detail=detail or (status.message or None)
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


@dataclass(frozen=True)
class LadderState:
    """What the tries of one round of a factor learnt: OOMs and disruptions so far.

    :param round: the first try number of the round (a cleared task starts a new round).
    :param ooms: OOMs classified in this round (the profile moves up one step per OOM).
    :param disruptions: cluster disruptions classified in this round (retried on the same profile).
    """

    round: int
    ooms: int = 0
    disruptions: int = 0

    @classmethod
    def from_stored(cls, stored: Any, *, current_round: int) -> LadderState:
        """The stored state if it belongs to ``current_round``, else a fresh one.

        :param stored: what the task state store returned (a dict, or anything else).
        :param current_round: :func:`round_start` of this try.
        """
        if isinstance(stored, Mapping) and stored.get("round") == current_round:
            ooms, disruptions = stored.get("ooms"), stored.get("disruptions")
            if isinstance(ooms, int) and isinstance(disruptions, int) and ooms >= 0 and disruptions >= 0:
                return cls(current_round, ooms, disruptions)
        return cls(current_round)


def round_start(*, max_tries: int | None, retries: int) -> int:
    """The first try number of the current round of tries.

    Clearing a task raises ``max_tries`` to ``try_number + retries`` (as Airflow computes it for
    reschedules too), so a round starts at ``max_tries - retries + 1``; this only tells rounds
    apart, the profile itself follows the OOMs counted in the round.

    :param max_tries: the task instance's ``max_tries`` (None when unknown: one round).
    :param retries: the task's ``retries``.
    """
    if max_tries is None or max_tries < retries:
        return 1
    return max_tries - retries + 1


def attempt_profile(planned: str, *, try_number: int, profiles: Mapping[str, PodProfile]) -> PodProfile:
    """The planned profile moved ``try_number - 1`` steps up, capped at the top.

    The operator passes ``ooms + 1`` (the OOMs of the round), never Airflow's try number.

    :param planned: the planned profile name.
    :param try_number: 1 + the number of steps to move up.
    :param profiles: profile name -> profile.
    """
    from finetune_sweep.sizing.profiles import next_profile

    if planned not in profiles:
        raise AirflowFailException(f"unknown profile {planned!r}; known profiles: {', '.join(profiles)}")
    profile = profiles[planned]
    for _ in range(max(try_number, 1) - 1):
        higher = next_profile(profile.name, profiles)
        if higher is None:
            break
        profile = higher
    return profile


def as_resource_requirements(value: Any) -> Any:
    """``container_resources`` as ``V1ResourceRequirements`` when it arrives as a plain dict.

    Quantities are strings (with ``render_template_as_native_obj`` a cpu ``"1"`` renders as 1).

    :param value: a dict ``{"requests": {...}, "limits": {...}}``, the model, or None.
    """
    if not isinstance(value, Mapping):
        return value
    from finetune_sweep.pods.spec import to_resource_requirements

    return to_resource_requirements(
        {part: {name: str(q) for name, q in (value.get(part) or {}).items()} for part in ("requests", "limits")}
    )


def _argument(arguments: list[str], flag: str) -> str | None:
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return None


def _api_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def _error_text(exc: BaseException) -> str:
    """One line for an error: an API error's status, reason and the API server's own message."""
    status = _api_status(exc)
    if status is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    text = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    try:
        message = json.loads(getattr(exc, "body", None) or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{text}: {message}" if message else text


class _RememberingPodManager(StartWatching, PodManager):
    """The provider's PodManager, remembering the last status it read of each pod.

    A pod deleted right after it terminated (eviction, preemption) can no longer be read when the
    failure is classified; its last seen status still tells what happened. While a pod starts,
    a lasting ``CreateContainerConfigError`` ends the wait (:mod:`finetune_sweep.pods.startup`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seen: dict[str, k8s.V1Pod] = {}

    def read_pod(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        remote = super().read_pod(pod)
        if remote is not None and remote.metadata is not None:
            self.last_seen[remote.metadata.name] = remote
        self.watch_start(remote)
        return remote


class FactorPodOperator(KubernetesPodOperator):
    """The pod of one factor (or of ``migrate``): backend choice, OOM ladder, named failures.

    See the module docstring for the behaviour. Every KubernetesPodOperator argument is accepted.

    :param factor: the factor this pod runs; None for pods without one (``migrate``).
    :param profile: the planned profile name (``STANDARD`` ...); the ladder starts there.
    :param profiles: the run's resolved profile ladder (``sizing.profiles_to_json``, the plan
        entry's ``profiles``); None: ``FINETUNE_PROFILES`` is read on the worker.
    :param ladder: apply the OOM ladder and the fail-fast policy; False (``migrate``): no profile
        logic, failures propagate as the KubernetesPodOperator raises them.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "factor", "profile")

    def __init__(
        self,
        *,
        factor: str | None = None,
        profile: str | None = None,
        profiles: Mapping[str, Any] | None = None,
        ladder: bool = True,
        container_resources: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(container_resources=as_resource_requirements(container_resources), **kwargs)
        self.factor = factor
        self.profile = profile
        self.profiles = dict(profiles) if profiles else None
        self.ladder = ladder
        self.attempt_profile: PodProfile | None = None
        self._profiles: dict[str, PodProfile] = {}
        self._ladder_state: LadderState | None = None
        self._ladder_from_store = False
        self._local_runner: LocalPodRunner | None = None
        self._context: Context | None = None
        self._settings: Settings | None = None
        # what the DAG author gave (the profile's own are added per try, never accumulated)
        self._base_tolerations: list[Any] | None = None
        self._base_affinity: Any = None
        self._interruption_recorded = False
        self._event_pod: k8s.V1Pod | None = None

    # -- execution

    def execute(self, context: Context) -> Any:
        """Run the pod on the configured backend; classify and record any failure."""
        from finetune_sweep.local.pod_runner import LocalPodResult

        # For map_index_template="{{ factor }}" (rendered with this context after execute).
        context["factor"] = self.factor  # type: ignore[typeddict-unknown-key]
        self._context = context
        self.container_resources = as_resource_requirements(self.container_resources)
        settings = self._read_settings()
        self._check_pod_template(settings)
        local = settings.pod_backend == "local"
        if not self._uses_ladder:
            if not local:
                try:
                    return super().execute(context)
                except Exception:
                    # on_finish_action keeps failed pods (the ladder reads them first): a failed
                    # migrate pod is not read again, so it goes now (or stays for debugging).
                    self._best_effort("delete the failed pod", self._clean_failed_pod)
                    raise
            result = self._run_local(context, settings=settings)
            if not result.succeeded:
                raise AirflowException(
                    f"pod {self.pod_request_obj.metadata.name} failed on the local backend: "
                    f"{PodTermination.from_local(result).exit_reason} ({result.reason})"
                )
            return None
        self._apply_attempt_profile(context)
        try:
            if not local:
                return super().execute(context)
            result = self._run_local(context, settings=settings)
        except (AirflowSkipException, _Classified):
            raise
        except AirflowTaskTimeout as exc:
            # Fail, do not retry: a hung pod would hang again; the pod goes with the task.
            self._record_interruption(context, "TimedOut: the task's execution_timeout elapsed")
            self.on_kill()
            raise PodFailed(
                f"factor {self.factor} exceeded its execution timeout on profile {self._profile_name}; not retried"
            ) from exc
        except Exception as exc:
            if self._killed:
                self._record_interruption(context, KILLED_REASON)
                raise
            termination = PodTermination(str(exc), None, False, None, None) if local else self._classify(exc)
            self._conclude(context, termination, cause=exc)
        assert isinstance(result, LocalPodResult)
        if not result.succeeded:
            if self._killed:
                self._record_interruption(context, KILLED_REASON)
                raise AirflowException(f"factor {self.factor}: the task was killed")
            self._conclude(context, PodTermination.from_local(result))
        return None

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """Deferrable mode: classify a failure after the trigger fired, exactly like :meth:`execute`.

        After a deferral this runs in a fresh operator instance: the try's profile and ladder are
        read again (from the task state store, unchanged since no OOM was classified meanwhile).
        When the pod was terminal before deferral it runs inside :meth:`execute`, which passes the
        classified failure on without classifying it again.
        """
        if not self._uses_ladder:
            return super().trigger_reentry(context, event)
        self._context = context
        if self.attempt_profile is None:
            self._read_settings()
            self._apply_attempt_profile(context, announce=False)
        # the pod the trigger watched, even if it can no longer be read
        self._event_pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=event.get("name"), namespace=event.get("namespace")))
        if event.get("status") == "error" and str(event.get("message", "")).startswith(CONFIG_ERROR_REASON):
            # FactorPodTrigger ended the start on a lasting config error: final. The provider treats
            # it as the start timeout it replaces: as "error" of a still-pending pod it would defer
            # again (3 times), and any other status waits for a pod that never completes.
            event = {**event, "status": "timeout"}
        try:
            return super().trigger_reentry(context, event)
        except (AirflowSkipException, _Classified):
            raise
        except Exception as exc:
            if self._killed:
                self._record_interruption(context, KILLED_REASON)
                raise
            self._conclude(context, self._classify(exc), cause=exc)

    def defer(self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None,
              timeout: Any = None) -> NoReturn:
        """Defer with the provider's trigger made a :class:`FactorPodTrigger`: a user's kill of the
        deferred task (no worker runs :meth:`on_kill` then) is recorded ``Killed`` by the triggerer."""
        from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

        from finetune_sweep.operators.trigger import FactorPodTrigger
        from finetune_sweep.settings import Settings

        if (type(trigger) is KubernetesPodTrigger and self._uses_ladder and self._context is not None
                and self.attempt_profile is not None):
            profile = self.attempt_profile
            killed = PodTermination(KILLED_REASON, None, False, profile.memory_bytes, None)
            row = self._attempt_row(self._context, killed, attempt=int(self._context["ti"].try_number),
                                    profile=profile, limit=profile.memory_bytes)
            grace = (self._settings or Settings).config_error_grace_seconds
            trigger = FactorPodTrigger.wrapping(trigger, killed_attempt=row, finetune_conn_id=self._conn_id,
                                                config_error_grace_seconds=grace)
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def on_kill(self) -> None:
        """Stop the pod (local process tree, or as the KubernetesPodOperator does); record ``Killed``."""
        if self._local_runner is not None:
            self._killed = True
            self._local_runner.kill()
        else:
            super().on_kill()
        if self._uses_ladder and self._context is not None:
            self._record_interruption(self._context, KILLED_REASON)

    @property
    def _uses_ladder(self) -> bool:
        return self.ladder and self.factor is not None and self.profile is not None

    @property
    def _profile_name(self) -> str:
        return self.attempt_profile.name if self.attempt_profile is not None else str(self.profile)

    def _read_settings(self) -> Settings:
        from finetune_sweep.settings import Settings, SettingsError

        try:
            # Read now, not at parse time: the same DAG runs on either backend.
            self._settings = Settings.from_env()
        except SettingsError as exc:
            raise AirflowFailException(str(exc)) from exc
        return self._settings

    def _check_pod_template(self, settings: Settings) -> None:
        """Refuse, again where the pod is built, a template that would widen it: ``plan`` checked
        the file when the run started, and it may have changed since."""
        from finetune_sweep.pods.template import PodTemplateError, check_pod_template

        try:
            check_pod_template(self.pod_template_file, db_secret=(settings.db_secret_name, settings.db_secret_key))
        except PodTemplateError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _run_local(self, context: Context, *, settings: Settings) -> LocalPodResult:
        """Build the pod offline and run it with the local pod backend."""
        from finetune_sweep.local.pod_runner import LocalPodRunner

        if not self.namespace:
            # no cluster to ask for a default namespace
            self.namespace = settings.namespace
        self.pod_request_obj = pod = self.build_pod_request_obj(context, dry_run=True)
        self._local_runner = LocalPodRunner(
            pod,
            log=self.log,
            db_secret=(settings.db_secret_name, settings.db_secret_key),
            conn_id=settings.conn_id,
            container_name=self.base_container_name,
        )
        result = self._local_runner.run()
        if result.succeeded and self.do_xcom_push:
            self.log.warning("do_xcom_push has no sidecar on the local pod backend; nothing pushed")
        return result

    # -- the ladder

    def _resolve_profiles(self) -> dict[str, PodProfile]:
        """The run's profiles: those the plan resolved (``profiles``), else ``FINETUNE_PROFILES``."""
        from finetune_sweep.sizing.profiles import SizingError, load_profiles, profiles_from_json

        try:
            if self.profiles:
                return profiles_from_json(self.profiles)
            self.log.warning("no profiles in the plan entry: reading FINETUNE_PROFILES on the worker")
            return load_profiles(os.environ.get("FINETUNE_PROFILES"))
        except SizingError as exc:
            # a bad ladder is no reason to retry
            raise AirflowFailException(str(exc)) from exc

    def _apply_attempt_profile(self, context: Context, *, announce: bool = True) -> PodProfile:
        """Size the pod for this try's profile (resources, label, node selection, env)."""
        from finetune_sweep.pods.spec import pod_labels, profile_affinity, profile_tolerations, resources_for

        self._profiles = profiles = self._resolve_profiles()
        state = self._load_ladder(context)
        ti = context["ti"]
        try_number = int(ti.try_number)
        planned = profiles.get(str(self.profile))
        profile = attempt_profile(str(self.profile), try_number=state.ooms + 1, profiles=profiles)
        self.attempt_profile = profile
        self.container_resources = as_resource_requirements(resources_for(profile))
        self.labels = {
            **(self.labels or {}),
            **pod_labels(factor=str(self.factor), profile=profile.name, run_id=self._record_run_id(context)),
        }
        selector = dict(self.node_selector or {})
        if planned is not None:
            # drop the planned pool's keys only: other selector entries are the DAG author's
            for key in planned.node_selector:
                selector.pop(key, None)
        selector.update(profile.node_selector)
        self.node_selector = selector
        if self._base_tolerations is None:
            self._base_tolerations = list(self.tolerations or [])
            self._base_affinity = self.affinity
        self.tolerations = [*self._base_tolerations, *profile_tolerations(profile)]
        self.affinity = profile_affinity(profile) or self._base_affinity
        self._set_env(
            {PROFILE_ENV: profile.name, ATTEMPT_ENV: str(try_number), AIRFLOW_RUN_ENV: str(context["run_id"])}
        )
        if announce:
            self.log.info(
                "factor %s try %s runs on profile %s (memory %s, planned %s; %s OOM(s), %s disruption(s) so far)",
                self.factor,
                try_number,
                profile.name,
                profile.memory,
                self.profile,
                state.ooms,
                state.disruptions,
            )
        return profile

    def _load_ladder(self, context: Context) -> LadderState:
        """This round's OOMs and disruptions: the task state store, else the recorded attempts."""
        ti = context["ti"]
        current = round_start(max_tries=getattr(ti, "max_tries", None), retries=int(self.retries or 0))
        store = context.get("task_state_store")  # type: ignore[attr-defined]
        if store is not None:
            try:
                state = LadderState.from_stored(store.get(LADDER_STATE_KEY), current_round=current)
                self._ladder_state, self._ladder_from_store = state, True
                return state
            except Exception as exc:  # the store is an API call: never let it decide the outcome
                self.log.warning("task state store unreadable (%s); counting the recorded attempts", exc)
        state = self._ladder_from_records(context, current)
        self._ladder_state, self._ladder_from_store = state, False
        return state

    def _ladder_from_records(self, context: Context, current: int) -> LadderState:
        from finetune_sweep.db.dsn import count_round_attempts, dsn_from_connection, redact

        dsn = None
        try:
            dsn = dsn_from_connection(self._conn_id)
            ooms, disruptions = count_round_attempts(
                dsn,
                run_id=self._record_run_id(context),
                factor=str(self.factor),
                airflow_run_id=str(context["run_id"]),
                since_attempt=current,
            )
            return LadderState(current, ooms, disruptions)
        except Exception as exc:
            self.log.warning(
                "no task state store and no attempt records (%s): factor %s starts on its planned profile",
                redact(str(exc), [dsn]),
                self.factor,
            )
            return LadderState(current)

    def _save_ladder(self, state: LadderState) -> None:
        self._ladder_state = state
        store = self._context.get("task_state_store") if self._context is not None else None  # type: ignore[attr-defined]
        if store is None:
            return  # the attempt record written next is the fallback's evidence
        self._best_effort("save the ladder state", lambda: store.set(LADDER_STATE_KEY, asdict(state)))

    def _set_env(self, values: Mapping[str, str]) -> None:
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_env_vars

        env = convert_env_vars(self.env_vars) if self.env_vars else []
        env = [var for var in env if var.name not in values]
        env.extend(k8s.V1EnvVar(name=name, value=value) for name, value in values.items())
        self.env_vars = env

    def _record_run_id(self, context: Context) -> str:
        """The finetune run id: the pod's ``--run-id``, else the Airflow run id."""
        return _argument([str(a) for a in self.arguments or []], "--run-id") or str(context["run_id"])

    @property
    def _conn_id(self) -> str:
        return self._settings.conn_id if self._settings is not None else "finetune_db"

    # -- the cluster

    @property
    def pod_manager(self) -> _RememberingPodManager:  # type: ignore[override]
        # cached like the provider's (its _refresh_cached_properties deletes the attribute)
        manager = self.__dict__.get("pod_manager")
        if manager is None:
            from finetune_sweep.settings import Settings

            # the class's default when the pod manager is needed before execute read the settings
            grace = (self._settings or Settings).config_error_grace_seconds
            manager = self.__dict__["pod_manager"] = _RememberingPodManager(
                kube_client=self.client, callbacks=self.callbacks, config_error_grace_seconds=grace
            )
        return manager

    @pod_manager.deleter
    def pod_manager(self) -> None:
        self.__dict__.pop("pod_manager", None)

    def get_or_create_pod(self, pod_request_obj: k8s.V1Pod, context: Context) -> k8s.V1Pod:
        """Reattach to a pod of an earlier try only while it runs on this try's profile.

        Any other pod this task instance left behind (another profile, finished, disrupted,
        already checked) is deleted (or kept and labelled checked, for debugging), and a fresh pod
        is created: a retry never inherits an old pod's OOM or its profile.
        """
        if not (self._uses_ladder and self.reattach_on_restart):
            return super().get_or_create_pod(pod_request_obj, context)
        from finetune_sweep.pods.spec import LABEL_PROFILE

        wanted = (pod_request_obj.metadata.labels or {}).get(LABEL_PROFILE)
        reuse = None
        for pod in self._leftover_pods(pod_request_obj, context):
            if reuse is None and self._reusable(pod, wanted):
                reuse = pod
                continue
            self._discard_leftover(pod)
        if reuse is not None:
            self.log.info(
                "reattaching to pod %s of an earlier try (still %s on profile %s)",
                reuse.metadata.name,
                reuse.status.phase,
                wanted,
            )
            self._best_effort("persist the pod identity", lambda: self._persist_pod_identity_to_task_state_store(context, reuse))
            return reuse
        self.pod_manager.create_pod(pod=pod_request_obj)
        self._best_effort(
            "persist the pod identity", lambda: self._persist_pod_identity_to_task_state_store(context, pod_request_obj)
        )
        if self.deferrable:
            # the pod as created: one that already ended (a refused container, an instant OOM) is
            # handled without a trip through the triggerer
            return self._best_effort("read the new pod", lambda: self.pod_manager.read_pod(pod_request_obj)) or pod_request_obj
        return pod_request_obj

    def _leftover_pods(self, pod_request_obj: k8s.V1Pod, context: Context) -> list[k8s.V1Pod]:
        """Pods of this task instance from earlier tries, newest first (the stored one included)."""
        from finetune_sweep.pods.spec import LABEL_FACTOR

        found: dict[str, k8s.V1Pod] = {}
        stored = self._best_effort("read the stored pod identity", lambda: self._stored_pod(context))
        if stored is not None:
            found[stored.metadata.name] = stored
        labels = {
            **self._get_ti_pod_labels(context, include_try_number=False),
            LABEL_FACTOR: (pod_request_obj.metadata.labels or {}).get(LABEL_FACTOR, ""),
        }
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items())) + ",!airflow-worker"
        listed = self._best_effort(
            "list earlier pods",
            lambda: self.client.list_namespaced_pod(namespace=pod_request_obj.metadata.namespace, label_selector=selector),
        )
        for pod in getattr(listed, "items", None) or []:
            found.setdefault(pod.metadata.name, pod)
        pods = [pod for pod in found.values() if pod.metadata.deletion_timestamp is None]
        return sorted(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""), reverse=True)

    def _stored_pod(self, context: Context) -> k8s.V1Pod | None:
        """The pod whose identity an earlier try stored, whatever its labels (None when gone)."""
        from airflow.providers.cncf.kubernetes.operators.pod import POD_IDENTIFIER_STATE_KEY

        store = context.get("task_state_store")  # type: ignore[attr-defined]
        stored = store.get(POD_IDENTIFIER_STATE_KEY) if store is not None else None
        if not isinstance(stored, Mapping) or not stored.get("name") or not stored.get("namespace"):
            return None
        try:
            return self.hook.get_pod(str(stored["name"]), str(stored["namespace"]))
        except Exception as exc:
            if _api_status(exc) == 404:
                return None
            raise

    def _reusable(self, pod: k8s.V1Pod, wanted_profile: str | None) -> bool:
        from finetune_sweep.pods.spec import LABEL_PROFILE

        labels = pod.metadata.labels or {}
        phase = pod.status.phase if pod.status else None
        return (
            wanted_profile is not None
            and labels.get(LABEL_PROFILE) == wanted_profile
            and labels.get(self.POD_CHECKED_KEY) != "True"
            and phase in ("Pending", "Running")
            and disruption_reason(pod) is None
        )

    def _discard_leftover(self, pod: k8s.V1Pod) -> None:
        phase = pod.status.phase if pod.status else None
        keep = self._settings is not None and self._settings.keep_failed_pods and phase == "Failed"
        if keep:
            self.log.info("keeping failed pod %s of an earlier try (FINETUNE_KEEP_FAILED_PODS)", pod.metadata.name)
            self.patch_already_checked(pod, reraise=False)
            return
        self.log.info("deleting pod %s of an earlier try (phase %s): this try starts a fresh pod", pod.metadata.name, phase)
        self._delete_pod_quietly(pod)

    def find_pod(self, namespace: str, context: Context, *, exclude_checked: bool = True) -> k8s.V1Pod | None:
        """Once this try's pod is known, read it by name: a kept pod of an earlier try with the
        same labels (its "checked" patch refused) is never mistaken for it."""
        if self._uses_ladder and self.pod is not None:
            try:
                return self.pod_manager.read_pod(self.pod)
            except Exception as exc:
                if _api_status(exc) == 404:
                    return None
                raise
        return super().find_pod(namespace, context, exclude_checked=exclude_checked)

    def _delete_pod_quietly(self, pod: k8s.V1Pod | None) -> None:
        if pod is None or pod.metadata is None or not pod.metadata.name:
            return
        self._best_effort(f"delete pod {pod.metadata.name}", lambda: self.pod_manager.delete_pod(pod))

    def _classify(self, cause: BaseException) -> PodTermination:
        """:meth:`_k8s_termination`, never raising: an unreadable outcome fails fast, recorded."""
        termination = self._best_effort("classify the pod's end", lambda: self._k8s_termination(cause))
        return termination or PodTermination("Unclassified", None, False, None, None, detail=_error_text(cause))

    def _k8s_termination(self, cause: BaseException) -> PodTermination:
        """The base container's end as the API server reports it, with what the pod said.

        :param cause: the error the provider raised (named when the pod was never created).
        """
        from finetune_sweep.db.dsn import redact

        target = self.pod or self._event_pod
        if target is None or target.metadata is None or not target.metadata.name:
            # creation itself failed (refused by the API server, admission, quota): not retried
            return kubernetes_termination(None, detail=redact(_error_text(cause))[:MAX_REASON_CHARS])
        remote, gone = None, False
        try:
            remote = self.pod_manager.read_pod(target)
        except Exception as exc:
            gone = _api_status(exc) == 404
            if not gone:
                self.log.warning("could not re-read pod %s: %s", target.metadata.name, exc)
        if remote is None:
            remote = self.pod_manager.last_seen.get(target.metadata.name) or (
                self.remote_pod if self.remote_pod is not None and self.remote_pod.status is not None else None
            )
        events, tail = ({}, [])
        if not gone and remote is not None:
            events, tail = self._best_effort("read the pod's log", lambda: self._pod_log(target)) or ({}, [])
        usage = events.get("pod_usage") or {}
        peak = usage.get("peak_memory_bytes") if isinstance(usage.get("peak_memory_bytes"), int) else None
        detail = pod_failure_detail(events, tail) if (events or tail) else None
        termination = kubernetes_termination(
            remote or target, container_name=self.base_container_name, peak_memory_bytes=peak, detail=detail
        )
        if remote is None and gone:
            # deleted under the task (not by its own on_kill) before any terminal status was seen
            return replace(termination, reason=DELETED_REASON, disrupted=True, detail="the pod was deleted")
        if gone and not termination.oom_killed and termination.exit_code is None and not termination.disrupted:
            return replace(termination, reason=DELETED_REASON, disrupted=True, detail="the pod was deleted")
        return termination

    def _pod_log(self, pod: k8s.V1Pod) -> tuple[dict[str, dict[str, Any]], list[str]]:
        text = self.client.read_namespaced_pod_log(
            name=pod.metadata.name,
            namespace=pod.metadata.namespace,
            container=self.base_container_name,
            tail_lines=LOG_TAIL_LINES,
        )
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return parse_pod_log(str(text or "").splitlines())

    # -- classification and records

    def _conclude(self, context: Context, termination: PodTermination, *, cause: BaseException | None = None) -> NoReturn:
        """Record the attempt, clean its pod up, raise as classified.

        OOM below the top -> :class:`PodOOMKilled` (the ladder state counts it first); disrupted
        with retries left -> :class:`PodDisrupted`; else :class:`PodFailed`. Recording and
        cleanup are best effort: their failures are logged and never change the outcome.
        """
        from finetune_sweep.sizing.profiles import format_bytes, next_profile

        profile = self._profile_that_ran(termination)
        try_number = termination.attempt or int(context["ti"].try_number)
        limit = termination.memory_limit_bytes or profile.memory_bytes
        state = self._ladder_state or LadderState(1)
        what = f"factor {self.factor} {termination.reason} on profile {profile.name}"
        if termination.oom_killed:
            sizes = f"(limit {format_bytes(limit)}, peak {format_bytes(termination.peak_memory_bytes)})"
            higher = self._best_effort("find the next profile", lambda: next_profile(profile.name, self._profiles))
            self._record(context, termination, attempt=try_number, profile=profile, limit=limit, factor_failed=True)
            self._clean_failed_pod()
            if higher is None:
                raise PodFailed(
                    f"{what} {sizes}; already at the largest profile {profile.name}: raise its memory "
                    "(FINETUNE_PROFILES) or split the factor"
                ) from cause
            self._save_ladder(replace(state, ooms=state.ooms + 1))
            raise PodOOMKilled(f"{what} {sizes}; retrying on {higher.name} ({format_bytes(higher.memory_bytes)})") from cause
        if termination.disrupted:
            budget = self._settings.disruption_retries if self._settings is not None else 0
            said = f" ({termination.detail})" if termination.detail else ""
            if state.disruptions < budget:
                self._record(context, termination, attempt=try_number, profile=profile, limit=limit, factor_failed=False)
                self._clean_failed_pod()
                self._save_ladder(replace(state, disruptions=state.disruptions + 1))
                raise PodDisrupted(
                    f"factor {self.factor}: the cluster disrupted its pod on profile {profile.name}: "
                    f"{termination.reason}{said}; retrying on the same profile "
                    f"(disruption {state.disruptions + 1} of {budget} allowed)"
                ) from cause
            self._record(context, termination, attempt=try_number, profile=profile, limit=limit, factor_failed=True)
            self._clean_failed_pod()
            raise PodFailed(
                f"factor {self.factor}: the cluster disrupted its pod on profile {profile.name}: "
                f"{termination.reason}{said}; {budget} disruption retries used up (FINETUNE_DISRUPTION_RETRIES)"
            ) from cause
        self._record(context, termination, attempt=try_number, profile=profile, limit=limit, factor_failed=True)
        self._clean_failed_pod()
        said = f" ({termination.detail})" if termination.detail else ""
        raise PodFailed(
            f"factor {self.factor} failed on profile {profile.name} (attempt {try_number}): "
            f"{termination.exit_reason}{said}; not retried (only an OOM moves a factor up)"
        ) from cause

    def _profile_that_ran(self, termination: PodTermination) -> PodProfile:
        """The profile of the pod that ran (its label), else this try's."""
        if termination.profile and termination.profile in self._profiles:
            return self._profiles[termination.profile]
        if self.attempt_profile is not None:
            return self.attempt_profile
        from finetune_sweep.sizing.profiles import PROFILES

        return self._profiles.get(str(self.profile)) or PROFILES[str(self.profile)]

    def _clean_failed_pod(self) -> None:
        """Delete the failed pod now that its status and logs were read (unless kept for debugging)."""
        pod = self.pod
        if pod is None or self._local_runner is not None:
            return
        if self._settings is not None and self._settings.keep_failed_pods:
            self.log.info("keeping failed pod %s (FINETUNE_KEEP_FAILED_PODS)", pod.metadata.name)
            return
        self._delete_pod_quietly(pod)

    def _record_interruption(self, context: Context, reason: str) -> None:
        """Record an attempt the task itself ended (killed, timed out): not a pod failure."""
        if self._interruption_recorded or self.attempt_profile is None:
            return
        self._interruption_recorded = True
        profile = self.attempt_profile
        termination = PodTermination(reason, None, False, profile.memory_bytes, None)
        self._record(
            context,
            termination,
            attempt=int(context["ti"].try_number),
            profile=profile,
            limit=profile.memory_bytes,
            factor_failed=False,
        )

    def _record(
        self,
        context: Context,
        termination: PodTermination,
        *,
        attempt: int,
        profile: PodProfile,
        limit: int,
        factor_failed: bool,
    ) -> None:
        """Record the attempt (``finetune_pod_attempts``) and the manifest; never raises.

        What the pod itself recorded for this attempt (its exit reason, e.g. ``baselines_incomplete:
        ...``, and its peak) is kept; an OOM kill, which the pod cannot record, always shows.
        """
        from finetune_sweep.db.dsn import dsn_from_connection, record_attempt, redact

        row = self._attempt_row(context, termination, attempt=attempt, profile=profile, limit=limit)
        dsn: str | None = None
        try:
            dsn = dsn_from_connection(self._conn_id)
            record_attempt(dsn, row, factor_failed=factor_failed)
        except Exception as exc:
            # The pod's outcome is what the task reports; a lost record is logged, not raised.
            self.log.error(
                "could not record attempt %s of factor %s (%s): %s",
                attempt,
                self.factor,
                row["exit_reason"],
                redact(f"{type(exc).__name__}: {exc}", [dsn]),
            )

    def _attempt_row(
        self, context: Context, termination: PodTermination, *, attempt: int, profile: PodProfile, limit: int
    ) -> dict[str, Any]:
        """The ``finetune_pod_attempts`` row of an ended attempt (:func:`finetune_sweep.db.dsn.record_attempt`)."""
        return {
            "run_id": self._record_run_id(context),
            "factor": self.factor,
            "airflow_run_id": str(context["run_id"]),
            "attempt": attempt,
            "profile": profile.name,
            "memory_limit_bytes": limit,
            "peak_memory_bytes": termination.peak_memory_bytes,
            "exit_reason": termination.recorded_reason,
            "duration_seconds": termination.seconds,
        }

    def _best_effort(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; log and return None on any error (classification must not escape)."""
        try:
            return action()
        except Exception as exc:
            self.log.warning("could not %s: %s: %s", what, type(exc).__name__, exc)
            return None
