"""FactorPodOperator: the KubernetesPodOperator of one factor, with its OOM ladder and backends.

What it adds to the KubernetesPodOperator (DESIGN sections 3, 6 and 7):

- **Plain-dict resources.** ``container_resources`` arriving as a dict (``expand_kwargs`` entries
  travel through XCom as JSON) is turned into ``V1ResourceRequirements`` before the pod is built.
- **Backend.** ``FINETUNE_POD_BACKEND`` (read at execute time): ``kubernetes`` (default) submits
  the pod as the KubernetesPodOperator does; ``local`` builds the very same V1Pod offline
  (``build_pod_request_obj(context, dry_run=True)``) and runs it with
  :mod:`finetune_sweep.local_pod`, a one-container kubelet emulation.
- **OOM ladder** (``ladder=True``, the ``run_factor`` pods). Try ``n`` of a factor runs on its
  planned profile moved ``n - 1`` steps up ``STANDARD -> MEDIUM -> HEAVY`` (profiles from
  ``FINETUNE_PROFILES`` at run time); resources, the profile label, the node selector and the
  ``FINETUNE_PROFILE`` / ``FINETUNE_ATTEMPT`` env are set for that profile before the pod is built.
  Only an OOM raises a retryable error, so ``try_number - 1`` is the number of OOMs so far. An
  OOM is recorded (``finetune_run_factors`` failed / ``OOMKilled``, one ``finetune_pod_attempts``
  row) and raised as an :class:`AirflowException` naming factor, profile, limit and peak; an OOM
  on the top profile, and any other failure, raise :class:`AirflowFailException` (no retry).
  The DAG gives ``run_factor`` ``retries=len(PROFILE_ORDER) - 1`` (two) for the ladder to climb.
  Clearing a task starts a new round of tries on the planned profile (see :func:`ladder_steps`).
- **Mapped-instance names.** ``execute`` puts the factor into the context as ``factor``; the DAG
  uses ``map_index_template="{{ task.factor }}"`` (``task`` is the unmapped operator, available
  already at the early, pre-execute rendering, so a running instance is named too).

The run id recorded with an attempt is the ``--run-id`` of the pod arguments (what the pod itself
writes under), else the Airflow run id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)
from kubernetes.client import models as k8s

from finetune_sweep.sizing import OOM_REASON

if TYPE_CHECKING:
    from airflow.sdk import Context

    from finetune_sweep.local_pod import LocalPodResult, LocalPodRunner
    from finetune_sweep.settings import Settings
    from finetune_sweep.sizing import PodProfile

__all__ = ["FactorPodOperator", "PodTermination", "attempt_profile", "kubernetes_termination"]

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


@dataclass(frozen=True)
class PodTermination:
    """How the base container of a pod attempt ended, whatever the backend.

    :param reason: the kubelet's terminated reason (``Completed``, ``Error``, ``OOMKilled``, ...),
        or the pod's phase/reason when the container never ran.
    :param exit_code: the container's exit code, None when it never terminated.
    :param oom_killed: whether the memory limit killed it.
    :param memory_limit_bytes: the container's memory limit.
    :param peak_memory_bytes: the last known peak (None when unknown).
    :param seconds: duration of the attempt, when known.
    :param detail: what the container said about its failure (its ``run_error`` /
        ``run_finished`` event, else its last output line), when known.
    """

    reason: str
    exit_code: int | None
    oom_killed: bool
    memory_limit_bytes: int | None
    peak_memory_bytes: int | None
    seconds: float | None = None
    detail: str | None = None

    @property
    def exit_reason(self) -> str:
        """What ``exit_reason`` records: ``OOMKilled`` or ``Error: exit N`` (or the reason)."""
        if self.oom_killed:
            return OOM_REASON
        if self.reason == DEADLINE_EXCEEDED:
            # the pod's bound stopped it: its container's exit code (143/137) says nothing more
            return DEADLINE_EXCEEDED
        if self.exit_code is not None:
            return f"Error: exit {self.exit_code}"
        return self.reason

    @classmethod
    def from_local(cls, result: LocalPodResult) -> PodTermination:
        """The termination of a local pod run.

        :param result: what :func:`finetune_sweep.local_pod.run_pod_locally` returned.
        """
        return cls(
            reason=result.reason,
            exit_code=result.exit_code,
            oom_killed=result.oom_killed,
            memory_limit_bytes=result.memory_limit_bytes,
            peak_memory_bytes=result.peak_memory_bytes,
            seconds=result.seconds,
            detail=(
                result.message
                or result.events.get("run_error", {}).get("error")
                or result.events.get("run_finished", {}).get("exit_reason")
                or (result.log_tail[-1] if result.log_tail else None)
            ),
        )


def kubernetes_termination(
    pod: k8s.V1Pod | None,
    *,
    container_name: str = "base",
    peak_memory_bytes: int | None = None,
) -> PodTermination:
    """Read a pod's status the way the ladder needs it: was the base container OOM-killed?

    OOM when the container's ``state.terminated.reason`` (or ``lastState``) is ``OOMKilled``, or
    when it was SIGKILLed (exit 137) with its last known peak at or near the limit. The peak of an
    ``OOMKilled`` container without a known peak is its limit (the kernel killed it there).

    :param pod: the pod as last read from the API server (``remote_pod``); None if never created.
    :param container_name: the base container.
    :param peak_memory_bytes: the peak the pod reported, if any (``pod_usage``).
    """
    from finetune_sweep.sizing import parse_quantity

    if pod is None:
        return PodTermination("PodNotCreated", None, False, None, peak_memory_bytes)
    limit = None
    for container in (pod.spec.containers if pod.spec else None) or []:
        if container.name == container_name and container.resources and container.resources.limits:
            memory = container.resources.limits.get("memory")
            limit = parse_quantity(str(memory)) if memory is not None else None
    status = pod.status
    terminated = None
    for container_status in (status.container_statuses if status else None) or []:
        if container_status.name != container_name:
            continue
        for state in (container_status.state, container_status.last_state):
            if state is not None and state.terminated is not None:
                terminated = state.terminated
                break
    if terminated is None:
        # never ran to termination (image pull, scheduling, eviction ...)
        reason = (status.reason if status else None) or (status.phase if status else None) or "Unknown"
        return PodTermination(reason, None, False, limit, peak_memory_bytes)
    reason = terminated.reason or ("Completed" if terminated.exit_code == 0 else "Error")
    if status is not None and status.reason == DEADLINE_EXCEEDED:
        # activeDeadlineSeconds: the pod's reason, its container merely shows the kill
        return PodTermination(
            DEADLINE_EXCEEDED, terminated.exit_code, False, limit, peak_memory_bytes, detail=status.message or None
        )
    oom = reason == OOM_REASON or (
        terminated.exit_code == SIGKILL_EXIT_CODE
        and limit is not None
        and peak_memory_bytes is not None
        and peak_memory_bytes >= OOM_NEAR_LIMIT_RATIO * limit
    )
    peak = peak_memory_bytes if peak_memory_bytes is not None or not oom else limit
    return PodTermination(
        reason=OOM_REASON if oom else reason,
        exit_code=terminated.exit_code,
        oom_killed=oom,
        memory_limit_bytes=limit,
        peak_memory_bytes=peak,
        detail=(terminated.message or "").strip() or None,
    )


def ladder_steps(*, try_number: int, max_tries: int | None, retries: int) -> int:
    """How many profile steps up this try runs: the OOMs since the first try of its round.

    Only an OOM raises a retryable error, so every try after the first of a round followed an OOM.
    Clearing a task starts a new round: Airflow raises ``max_tries`` to ``try_number + retries``,
    so the round's first try is ``max_tries - retries + 1`` (as Airflow itself computes it for
    reschedules), and a cleared factor starts again on its planned profile instead of climbing.

    :param try_number: Airflow's try number (1 for the first try).
    :param max_tries: the task instance's ``max_tries``; ``None`` when unknown (then rounds are
        not told apart and every earlier try counts).
    :param retries: the task's ``retries``.
    """
    if max_tries is None or max_tries < retries:
        return max(try_number - 1, 0)
    return max(try_number - (max_tries - retries + 1), 0)


def attempt_profile(planned: str, *, try_number: int, profiles: Mapping[str, PodProfile]) -> PodProfile:
    """The profile of try ``try_number``: the planned one moved ``try_number - 1`` steps up.

    Capped at the top profile (a cleared task increments its try number without an OOM).

    :param planned: the planned profile name.
    :param try_number: Airflow's try number (1 for the first try).
    :param profiles: profile name -> profile (``sizing.load_profiles``).
    """
    from finetune_sweep.sizing import next_profile

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
    from finetune_sweep.pods import to_resource_requirements

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


class FactorPodOperator(KubernetesPodOperator):
    """The pod of one factor (or of ``migrate``): backend choice, OOM ladder, named failures.

    See the module docstring for the behaviour. Every KubernetesPodOperator argument is accepted.

    :param factor: the factor this pod runs; None for pods without one (``migrate``).
    :param profile: the planned profile name (``STANDARD`` ...); the ladder starts there.
    :param ladder: apply the OOM ladder and the fail-fast policy; False (``migrate``): no profile
        logic, failures propagate as the KubernetesPodOperator raises them.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "factor", "profile")

    def __init__(
        self,
        *,
        factor: str | None = None,
        profile: str | None = None,
        ladder: bool = True,
        container_resources: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(container_resources=as_resource_requirements(container_resources), **kwargs)
        self.factor = factor
        self.profile = profile
        self.ladder = ladder
        self.attempt_profile: PodProfile | None = None
        self._profiles: dict[str, PodProfile] = {}
        self._local_runner: LocalPodRunner | None = None

    # -- execution

    def execute(self, context: Context) -> Any:
        """Run the pod on the configured backend; apply the ladder on failure."""
        from finetune_sweep.local_pod import LocalPodResult
        from finetune_sweep.settings import Settings, SettingsError

        # For map_index_template="{{ factor }}" (rendered with this context after execute).
        context["factor"] = self.factor  # type: ignore[typeddict-unknown-key]
        self.container_resources = as_resource_requirements(self.container_resources)
        try:
            # Read now, not at parse time: the same DAG runs on either backend.
            settings = Settings.from_env()
        except SettingsError as exc:
            raise AirflowFailException(str(exc)) from exc
        local = settings.pod_backend == "local"
        if not self._uses_ladder:
            if not local:
                return super().execute(context)
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
        except AirflowSkipException:
            raise
        except Exception as exc:
            # Every failure is classified: only an OOM may be retried (it moves the profile up);
            # anything else failing fast keeps try_number - 1 == the number of OOMs.
            termination = (
                PodTermination(str(exc), None, False, None, None) if local else self._remote_termination()
            )
            self._fail(context, termination, cause=exc)
        assert isinstance(result, LocalPodResult)
        if not result.succeeded:
            self._fail(context, PodTermination.from_local(result))
        return None

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """Deferrable mode: classify a failure after the trigger fired, like :meth:`execute`."""
        if not self._uses_ladder:
            return super().trigger_reentry(context, event)
        self._apply_attempt_profile(context, announce=False)
        try:
            return super().trigger_reentry(context, event)
        except AirflowSkipException:
            raise
        except Exception as exc:
            self._fail(context, self._remote_termination(), cause=exc)

    def on_kill(self) -> None:
        """Kill the local process tree, or the pod as the KubernetesPodOperator does."""
        if self._local_runner is not None:
            self._local_runner.kill()
            return
        super().on_kill()

    @property
    def _uses_ladder(self) -> bool:
        return self.ladder and self.factor is not None and self.profile is not None

    def _run_local(self, context: Context, *, settings: Settings) -> LocalPodResult:
        """Build the pod offline and run it with the local pod backend."""
        from finetune_sweep.local_pod import LocalPodRunner

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

    def _apply_attempt_profile(self, context: Context, *, announce: bool = True) -> PodProfile:
        """Resize the pod for this try's profile (resources, label, node selector, env)."""
        from finetune_sweep.pods import pod_labels, resources_for
        from finetune_sweep.sizing import SizingError, load_profiles

        try:
            self._profiles = profiles = load_profiles(os.environ.get("FINETUNE_PROFILES"))
        except SizingError as exc:
            # a bad override is no reason to retry (a retry would also move the profile up)
            raise AirflowFailException(str(exc)) from exc
        ti = context["ti"]
        try_number = int(ti.try_number)
        steps = ladder_steps(
            try_number=try_number, max_tries=getattr(ti, "max_tries", None), retries=int(self.retries or 0)
        )
        planned = profiles[self.profile] if self.profile in profiles else None
        # attempt_profile counts a first try as 1: ``steps`` OOMs so far put this try steps + 1.
        profile = attempt_profile(str(self.profile), try_number=steps + 1, profiles=profiles)
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
        self._set_env(
            {PROFILE_ENV: profile.name, ATTEMPT_ENV: str(try_number), AIRFLOW_RUN_ENV: str(context["run_id"])}
        )
        if announce:
            self.log.info(
                "factor %s try %s runs on profile %s (memory %s, planned %s)",
                self.factor,
                try_number,
                profile.name,
                profile.memory,
                self.profile,
            )
        return profile

    def _set_env(self, values: Mapping[str, str]) -> None:
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_env_vars

        env = convert_env_vars(self.env_vars) if self.env_vars else []
        env = [var for var in env if var.name not in values]
        env.extend(k8s.V1EnvVar(name=name, value=value) for name, value in values.items())
        self.env_vars = env

    def _record_run_id(self, context: Context) -> str:
        """The finetune run id: the pod's ``--run-id``, else the Airflow run id."""
        return _argument([str(a) for a in self.arguments or []], "--run-id") or str(context["run_id"])

    def _remote_termination(self) -> PodTermination:
        """The base container's termination as the API server last reported it."""
        pod = self.remote_pod
        if pod is not None and not (pod.status and pod.status.container_statuses) and self.pod is not None:
            # the cached copy predates the termination: ask again (the pod may be gone: keep ours)
            from kubernetes.client.exceptions import ApiException

            try:
                pod = self.pod_manager.read_pod(self.pod)
            except ApiException as exc:
                self.log.warning("could not re-read pod %s: %s", self.pod.metadata.name, exc.reason)
        return kubernetes_termination(pod or self.pod_request_obj, container_name=self.base_container_name)

    def _fail(self, context: Context, termination: PodTermination, *, cause: BaseException | None = None) -> NoReturn:
        """Record the failed attempt, then raise: retryable for an OOM below the top, else fail."""
        from finetune_sweep.sizing import format_bytes, next_profile

        profile = self.attempt_profile
        assert profile is not None, "_apply_attempt_profile runs before any failure"
        try_number = int(context["ti"].try_number)
        limit = termination.memory_limit_bytes or profile.memory_bytes
        self._record(context, termination, attempt=try_number, profile=profile, limit=limit)
        what = f"factor {self.factor} {termination.reason} on profile {profile.name}"
        if termination.oom_killed:
            sizes = f"(limit {format_bytes(limit)}, peak {format_bytes(termination.peak_memory_bytes)})"
            higher = next_profile(profile.name, self._profiles)
            if higher is None:
                raise AirflowFailException(
                    f"{what} {sizes}; already at the largest profile {profile.name}: raise its memory "
                    "(FINETUNE_PROFILES) or split the factor"
                ) from cause
            raise AirflowException(
                f"{what} {sizes}; retrying on {higher.name} ({format_bytes(higher.memory_bytes)})"
            ) from cause
        said = f" ({termination.detail})" if termination.detail else ""
        raise AirflowFailException(
            f"factor {self.factor} failed on profile {profile.name} (attempt {try_number}): "
            f"{termination.exit_reason}{said}; not retried (only an OOM moves a factor up)"
        ) from cause

    def _record(
        self, context: Context, termination: PodTermination, *, attempt: int, profile: PodProfile, limit: int
    ) -> None:
        """Record the failed attempt on the manifest (upsert, status ``failed``) and in the history.

        What the pod itself recorded for this attempt (its exit reason, e.g. ``baselines_incomplete:
        ...``, and its peak) is kept; an OOM kill, which the pod cannot record, always shows.
        """
        import psycopg
        from finetune.persistence import DatabaseUnavailable, connect

        from finetune_sweep.db import dsn_from_connection
        from finetune_sweep.db import redact
        from finetune_sweep.settings import Settings

        row = {
            "run_id": self._record_run_id(context),
            "factor": self.factor,
            "airflow_run_id": str(context["run_id"]),
            "attempt": attempt,
            "profile": profile.name,
            "memory_limit_bytes": limit,
            "peak_memory_bytes": termination.peak_memory_bytes,
            "exit_reason": termination.exit_reason,
            "oom_reason": OOM_REASON,
            "duration_seconds": termination.seconds,
        }
        conn_id = Settings.from_env().conn_id
        try:
            dsn = dsn_from_connection(conn_id)
        except AirflowNotFoundException as exc:
            self.log.error("could not record attempt %s of factor %s: %s", attempt, self.factor, exc)
            return
        try:
            with connect(dsn) as conn, conn.transaction():
                conn.execute(_UPSERT_FAILED_FACTOR, row)
                conn.execute(_UPSERT_FAILED_ATTEMPT, row)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # The pod's failure is the error to raise; a lost record is logged, not swallowed.
            self.log.error(
                "could not record attempt %s of factor %s: %s", attempt, self.factor, redact(str(exc), [dsn])
            )


# The pod's own record of the same attempt wins (more precise), except against an OOM kill.
_UPSERT_FAILED_FACTOR = """
INSERT INTO finetune_run_factors AS f
    (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes, exit_reason, attempt, updated_at)
VALUES (%(run_id)s, %(factor)s, %(profile)s, 'failed', %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(attempt)s, now())
ON CONFLICT (run_id, factor) DO UPDATE SET
    status = 'failed',
    profile = EXCLUDED.profile,
    memory_limit_bytes = EXCLUDED.memory_limit_bytes,
    exit_reason = CASE
        WHEN f.attempt = EXCLUDED.attempt AND f.exit_reason IS NOT NULL
             AND EXCLUDED.exit_reason <> %(oom_reason)s THEN f.exit_reason
        ELSE EXCLUDED.exit_reason END,
    peak_memory_bytes = CASE
        WHEN f.attempt = EXCLUDED.attempt THEN GREATEST(f.peak_memory_bytes, EXCLUDED.peak_memory_bytes)
        ELSE EXCLUDED.peak_memory_bytes END,
    attempt = EXCLUDED.attempt,
    updated_at = now()
"""

_UPSERT_FAILED_ATTEMPT = """
INSERT INTO finetune_pod_attempts AS a
    (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
     duration_seconds, finished_at)
VALUES (%(run_id)s, %(factor)s, %(airflow_run_id)s, %(attempt)s, %(profile)s, %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(duration_seconds)s, now())
ON CONFLICT (run_id, factor, airflow_run_id, attempt) DO UPDATE SET
    exit_reason = CASE WHEN EXCLUDED.exit_reason = %(oom_reason)s THEN EXCLUDED.exit_reason ELSE a.exit_reason END,
    peak_memory_bytes = GREATEST(a.peak_memory_bytes, EXCLUDED.peak_memory_bytes),
    memory_limit_bytes = COALESCE(a.memory_limit_bytes, EXCLUDED.memory_limit_bytes),
    duration_seconds = COALESCE(a.duration_seconds, EXCLUDED.duration_seconds)
"""
