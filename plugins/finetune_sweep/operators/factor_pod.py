"""FactorPodOperator: the KubernetesPodOperator of one factor, with its OOM ladder and backends.

What it adds to the KubernetesPodOperator (DESIGN sections 3, 6 and 7):

- **Plain-dict resources.** ``container_resources`` arriving as a dict (``expand_kwargs`` entries
  travel through XCom as JSON) is turned into ``V1ResourceRequirements`` before the pod is built.
- **Backend.** ``FINETUNE_POD_BACKEND`` (read at execute time): ``kubernetes`` (default) submits
  the pod as the KubernetesPodOperator does (sync or deferrable); ``local`` builds the very same
  V1Pod offline (``build_pod_request_obj(context, dry_run=True)``) and runs it with
  :mod:`finetune_sweep.local.pod_runner`, a one-container kubelet emulation.
- **OOM ladder** (``ladder=True``, the ``run_factor`` pods; :mod:`finetune_sweep.operators.ladder`).
  The OOM count of a factor's round of tries lives with the task: Airflow's task state store
  (shared by the tries of one task instance), written only when an OOM (or a disruption) is
  classified; where no store is available, the attempts recorded in ``finetune_pod_attempts`` are
  counted instead. A try runs on its planned profile moved one step up ``STANDARD -> MEDIUM ->
  HEAVY`` per OOM so far, never by ``try_number``: a zombie, a heartbeat timeout or a cleared
  running task retries on the same profile. Clearing a task starts a new round (Airflow raises
  ``max_tries``) on the planned profile. Resources, the profile label, node selector, tolerations,
  affinity and the ``FINETUNE_PROFILE`` / ``FINETUNE_ATTEMPT`` env follow that profile, from the
  ``profiles`` the plan resolved once for the run (``FINETUNE_PROFILES`` is not re-read on the worker).
- **Every failure classified** (how the pod ended: :mod:`finetune_sweep.pods.termination`). The
  pod that actually ran decides (its profile label and memory limit are what is recorded): an OOM
  below the top profile raises a retryable :class:`PodOOMKilled`; a pod the cluster disrupted
  (condition ``DisruptionTarget``, or status reason ``Evicted``, or deleted under the task) raises
  a retryable :class:`PodDisrupted` on the same profile, at most ``FINETUNE_DISRUPTION_RETRIES``
  times; anything else, an OOM on the top profile included, raises :class:`PodFailed` (no retry).
  Errors while classifying or recording (API errors, database errors, anything) are logged and
  never change that outcome.
- **Reattachment safety.** A pod left by an earlier try (worker crash) is reused only while it is
  still running on this try's profile; any other leftover of this task instance is deleted and a
  fresh pod created (kept, and labelled checked, when ``FINETUNE_KEEP_FAILED_PODS`` asks for it).
- **A container that cannot be configured** (``CreateContainerConfigError``: a missing DSN Secret
  or key) fails the start after ``FINETUNE_CONFIG_ERROR_GRACE_SECONDS`` (30) with the kubelet's
  message, not after the startup timeout (the pod managers of :mod:`finetune_sweep.operators.pod_managers`;
  deferrable: :class:`~finetune_sweep.operators.trigger.FactorPodTrigger` watches the same).
- **Killed tasks** (``on_kill``: worker shutdown, a user marking the task) are recorded as
  ``Killed``, not as a pod failure; while deferred, by the trigger
  (:class:`finetune_sweep.operators.trigger.FactorPodTrigger`, which :meth:`defer` puts in place of
  the provider's). Failed pods are deleted once their logs and status were read
  (``FINETUNE_KEEP_FAILED_PODS=true`` keeps them for debugging).
- **Mapped-instance names.** ``execute`` puts the factor into the context as ``factor``; the DAG
  uses ``map_index_template="{{ task.factor }}"``.

The run id recorded with an attempt is the ``--run-id`` of the pod arguments (what the pod itself
writes under), else the Airflow run id. The Airflow side records with
:mod:`finetune_sweep.operators.recording` (psycopg only): a worker image never needs the pod package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_env_vars
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
)
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from finetune_sweep.db.dsn import redact
from finetune_sweep.local.pod_runner import LocalPodResult, LocalPodRunner
from finetune_sweep.operators.ladder import (
    LadderState,
    attempt_profile,
    ladder_step,
    recorded_ladder,
    round_start,
    save_ladder,
    stored_ladder,
)
from finetune_sweep.operators.pod_managers import RememberingPodManager
from finetune_sweep.operators.reattach import leftover_selector, newest_first, read_unless_gone, reusable, stored_pod
from finetune_sweep.operators.recording import attempt_row, record_quietly
from finetune_sweep.operators.trigger import FactorPodTrigger
from finetune_sweep.outcomes import CONFIG_ERROR_REASON, DELETED_REASON, KILLED_REASON, TIMED_OUT_REASON
from finetune_sweep.pods.spec import (
    AIRFLOW_RUN_ENV,
    ATTEMPT_ENV,
    LABEL_PROFILE,
    PROFILE_ENV,
    WORKERS_ENV,
    argument_value,
    as_resource_requirements,
    pod_labels,
    profile_affinity,
    profile_tolerations,
    resources_for,
)
from finetune_sweep.pods.template import PodTemplateError, check_pod_template
from finetune_sweep.pods.termination import (
    MAX_REASON_CHARS,
    PodTermination,
    api_error_text,
    kubernetes_termination,
    pod_failure_detail,
    read_pod_log,
)
from finetune_sweep.settings import Settings, SettingsError, sizing_overrides
from finetune_sweep.sizing.profiles import (
    PROFILES,
    PodProfile,
    SizingError,
    load_profiles,
    next_profile,
    pod_workers,
    profiles_from_json,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["FactorPodOperator", "PodDisrupted", "PodFailed", "PodOOMKilled"]

# How much of the pod's log is read back after a failure for its own events (pod_usage, run_error).
LOG_TAIL_LINES = 200


class _Classified(AirflowException):
    """A failure this operator already classified and recorded (never classified twice)."""


class PodOOMKilled(_Classified):
    """The pod was OOM-killed below the top profile: retried one profile up."""


class PodDisrupted(_Classified):
    """The cluster disrupted the pod (eviction, preemption, node shutdown): retried on the same profile."""


class PodFailed(_Classified, AirflowFailException):
    """Any other failure (an OOM on the top profile included): the factor fails without retry."""


# What the task raises for each outcome of the ladder (operators.ladder.LadderStep.outcome).
_RAISED_FOR: dict[str, type[_Classified]] = {"oom": PodOOMKilled, "disrupted": PodDisrupted, "failed": PodFailed}


class FactorPodOperator(KubernetesPodOperator):
    """The pod of one factor (or of ``migrate``): backend choice, OOM ladder, named failures.

    See the module docstring for the behaviour. Every KubernetesPodOperator argument is accepted.

    :param factor: the factor this pod runs; None for pods without one (``migrate``).
    :param profile: the planned profile name (``STANDARD`` ...); the ladder starts there.
    :param profiles: the run's resolved profile ladder (``sizing.profiles_to_json``, the plan
        entry's ``profiles``); None: ``FINETUNE_PROFILES`` is read on the worker.
    :param workers: the pod's worker processes (the plan entry's ``workers``: the map profile's
        cpus, capped by the cryptos), the same on every try; None: the planned profile's.
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
        workers: int | None = None,
        ladder: bool = True,
        container_resources: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(container_resources=as_resource_requirements(container_resources), **kwargs)
        self.factor = factor
        self.profile = profile
        self.profiles = dict(profiles) if profiles else None
        self.planned_workers = workers
        self.ladder = ladder
        self.attempt_profile: PodProfile | None = None
        self.workers: int | None = None  # this try's worker processes (set with its profile)
        self._profiles: dict[str, PodProfile] = {}
        self._ladder_state: LadderState | None = None
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
        # For map_index_template="{{ factor }}" (rendered with this context after execute).
        context["factor"] = self.factor  # type: ignore[typeddict-unknown-key]
        self._context = context
        self.container_resources = as_resource_requirements(self.container_resources)
        settings = self._read_settings()
        self._check_pod_template()
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
                    f"{result.termination().exit_reason} ({result.reason})"
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
            self._record_interruption(context, TIMED_OUT_REASON)
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
            self._conclude(context, result.termination())
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

    def defer(
        self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None, timeout: Any = None
    ) -> NoReturn:
        """Defer with the provider's trigger made a :class:`FactorPodTrigger`: a user's kill of the
        deferred task (no worker runs :meth:`on_kill` then) is recorded ``Killed`` by the triggerer."""
        if (
            type(trigger) is KubernetesPodTrigger
            and self._uses_ladder
            and self._context is not None
            and self.attempt_profile is not None
        ):
            profile = self.attempt_profile
            killed = PodTermination(KILLED_REASON, None, False, profile.memory_bytes, None)
            row = self._attempt_row(
                self._context,
                killed,
                attempt=int(self._context["ti"].try_number),
                profile=profile,
                limit=profile.memory_bytes,
            )
            grace = (self._settings or Settings).config_error_grace_seconds
            trigger = FactorPodTrigger.wrapping(
                trigger, killed_attempt=row, finetune_conn_id=self._conn_id, config_error_grace_seconds=grace
            )
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
        try:
            # Read now, not at parse time: the same DAG runs on either backend.
            self._settings = Settings.from_env()
        except SettingsError as exc:
            raise AirflowFailException(str(exc)) from exc
        return self._settings

    def _check_pod_template(self) -> None:
        """Refuse, again where the pod is built, a template that would widen it: ``plan`` checked
        the file when the run started, and it may have changed since."""
        try:
            check_pod_template(self.pod_template_file)
        except PodTemplateError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _run_local(self, context: Context, *, settings: Settings) -> LocalPodResult:
        """Build the pod offline and run it with the local pod backend."""
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
        try:
            if self.profiles:
                return profiles_from_json(self.profiles)
            self.log.warning("no profiles in the plan entry: reading FINETUNE_PROFILES on the worker")
            return load_profiles(sizing_overrides()[0])
        except SizingError as exc:
            # a bad ladder is no reason to retry
            raise AirflowFailException(str(exc)) from exc

    def _apply_attempt_profile(self, context: Context, *, announce: bool = True) -> PodProfile:
        """Size the pod for this try's profile (resources, label, node selection, env)."""
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
        # Fixed for every try: a try one profile up after an OOM gains memory per worker.
        self.workers = self.planned_workers or pod_workers(planned or profile, len(self._cryptos()))
        self._set_env(
            {
                PROFILE_ENV: profile.name,
                ATTEMPT_ENV: str(try_number),
                AIRFLOW_RUN_ENV: str(context["run_id"]),
                WORKERS_ENV: str(self.workers),
            }
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
        current = round_start(max_tries=getattr(context["ti"], "max_tries", None), retries=int(self.retries or 0))
        store = context.get("task_state_store")  # type: ignore[attr-defined]
        state = stored_ladder(store, current_round=current, log=self.log)
        if state is None:
            state = recorded_ladder(
                self._conn_id,
                run_id=self._record_run_id(context),
                factor=str(self.factor),
                airflow_run_id=str(context["run_id"]),
                current_round=current,
                log=self.log,
            )
        self._ladder_state = state
        return state

    def _save_ladder(self, state: LadderState) -> None:
        self._ladder_state = state
        store = self._context.get("task_state_store") if self._context is not None else None  # type: ignore[attr-defined]
        if store is None:
            return  # the attempt record written next is the fallback's evidence
        self._best_effort("save the ladder state", lambda: save_ladder(store, state))

    def _set_env(self, values: Mapping[str, str]) -> None:
        env = convert_env_vars(self.env_vars) if self.env_vars else []
        env = [var for var in env if var.name not in values]
        env.extend(k8s.V1EnvVar(name=name, value=value) for name, value in values.items())
        self.env_vars = env

    def _argument(self, flag: str) -> str | None:
        """The value of the pod's ``flag`` argument, if it has one."""
        return argument_value([str(a) for a in self.arguments or []], flag)

    def _cryptos(self) -> list[str]:
        """The pod's ``--cryptos`` (its worker count never exceeds them)."""
        return [crypto for crypto in (self._argument("--cryptos") or "").split(",") if crypto]

    def _record_run_id(self, context: Context) -> str:
        """The finetune run id: the pod's ``--run-id``, else the Airflow run id."""
        return self._argument("--run-id") or str(context["run_id"])

    @property
    def _conn_id(self) -> str:
        return self._settings.conn_id if self._settings is not None else "finetune_db"

    # -- the cluster

    @property
    def pod_manager(self) -> RememberingPodManager:  # type: ignore[override]
        # cached like the provider's (its _refresh_cached_properties deletes the attribute)
        manager = self.__dict__.get("pod_manager")
        if manager is None:
            # the class's default when the pod manager is needed before execute read the settings
            grace = (self._settings or Settings).config_error_grace_seconds
            manager = self.__dict__["pod_manager"] = RememberingPodManager(
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
        wanted = (pod_request_obj.metadata.labels or {}).get(LABEL_PROFILE)
        reuse = None
        for pod in self._leftover_pods(pod_request_obj, context):
            if reuse is None and reusable(pod, wanted_profile=wanted):
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
            self._best_effort(
                "persist the pod identity", lambda: self._persist_pod_identity_to_task_state_store(context, reuse)
            )
            return reuse
        self.pod_manager.create_pod(pod=pod_request_obj)
        self._best_effort(
            "persist the pod identity", lambda: self._persist_pod_identity_to_task_state_store(context, pod_request_obj)
        )
        if self.deferrable:
            # the pod as created: one that already ended (a refused container, an instant OOM) is
            # handled without a trip through the triggerer
            return (
                self._best_effort("read the new pod", lambda: self.pod_manager.read_pod(pod_request_obj))
                or pod_request_obj
            )
        return pod_request_obj

    def _leftover_pods(self, pod_request_obj: k8s.V1Pod, context: Context) -> list[k8s.V1Pod]:
        """Pods of this task instance from earlier tries, newest first (the stored one included)."""
        store = context.get("task_state_store")  # type: ignore[attr-defined]
        stored = self._best_effort("read the stored pod identity", lambda: stored_pod(self.hook, store))
        ti_labels = self._get_ti_pod_labels(context, include_try_number=False)
        selector = leftover_selector(ti_labels, pod_request_obj=pod_request_obj)
        listed = self._best_effort(
            "list earlier pods",
            lambda: self.client.list_namespaced_pod(
                namespace=pod_request_obj.metadata.namespace, label_selector=selector
            ),
        )
        return newest_first([*([stored] if stored is not None else []), *(getattr(listed, "items", None) or [])])

    def _discard_leftover(self, pod: k8s.V1Pod) -> None:
        phase = pod.status.phase if pod.status else None
        keep = self._settings is not None and self._settings.keep_failed_pods and phase == "Failed"
        if keep:
            self.log.info("keeping failed pod %s of an earlier try (FINETUNE_KEEP_FAILED_PODS)", pod.metadata.name)
            self.patch_already_checked(pod, reraise=False)
            return
        self.log.info(
            "deleting pod %s of an earlier try (phase %s): this try starts a fresh pod", pod.metadata.name, phase
        )
        self._delete_pod_quietly(pod)

    def find_pod(self, namespace: str, context: Context, *, exclude_checked: bool = True) -> k8s.V1Pod | None:
        """Once this try's pod is known, read it by name: a kept pod of an earlier try with the
        same labels (its "checked" patch refused) is never mistaken for it."""
        if self._uses_ladder and self.pod is not None:
            return read_unless_gone(lambda: self.pod_manager.read_pod(self.pod))
        return super().find_pod(namespace, context, exclude_checked=exclude_checked)

    def _delete_pod_quietly(self, pod: k8s.V1Pod | None) -> None:
        if pod is None or pod.metadata is None or not pod.metadata.name:
            return
        self._best_effort(f"delete pod {pod.metadata.name}", lambda: self.pod_manager.delete_pod(pod))

    def _classify(self, cause: BaseException) -> PodTermination:
        """:meth:`_k8s_termination`, never raising: an unreadable outcome fails fast, recorded."""
        termination = self._best_effort("classify the pod's end", lambda: self._k8s_termination(cause))
        return termination or PodTermination("Unclassified", None, False, None, None, detail=api_error_text(cause))

    def _k8s_termination(self, cause: BaseException) -> PodTermination:
        """The base container's end as the API server reports it, with what the pod said.

        :param cause: the error the provider raised (named when the pod was never created).
        """
        target = self.pod or self._event_pod
        if target is None or target.metadata is None or not target.metadata.name:
            # creation itself failed (refused by the API server, admission, quota): not retried
            return kubernetes_termination(None, detail=redact(api_error_text(cause))[:MAX_REASON_CHARS])
        remote, gone = None, False
        try:
            remote = self.pod_manager.read_pod(target)
        except Exception as exc:  # noqa: BLE001 - any failed read: the last status seen still tells
            gone = isinstance(exc, ApiException) and exc.status == 404
            if not gone:
                self.log.warning("could not re-read pod %s: %s", target.metadata.name, exc)
        if remote is None:
            remote = self.pod_manager.last_seen.get(target.metadata.name) or (
                self.remote_pod if self.remote_pod is not None and self.remote_pod.status is not None else None
            )
        events, tail = ({}, [])
        if not gone and remote is not None:
            events, tail = self._best_effort(
                "read the pod's log",
                lambda: read_pod_log(
                    self.client, target, container=self.base_container_name, tail_lines=LOG_TAIL_LINES
                ),
            ) or ({}, [])
        usage = events.get("pod_usage") or {}
        peak = usage.get("peak_memory_bytes") if isinstance(usage.get("peak_memory_bytes"), int) else None
        detail = pod_failure_detail(events, tail) if (events or tail) else None
        termination = kubernetes_termination(
            remote or target, container_name=self.base_container_name, peak_memory_bytes=peak, detail=detail
        )
        unfinished = not termination.oom_killed and termination.exit_code is None and not termination.disrupted
        if gone and (remote is None or unfinished):
            # deleted under the task (not by its own on_kill) before any terminal status was seen
            return replace(termination, reason=DELETED_REASON, disrupted=True, detail="the pod was deleted")
        return termination

    # -- classification and records

    def _conclude(
        self, context: Context, termination: PodTermination, *, cause: BaseException | None = None
    ) -> NoReturn:
        """Record the attempt, clean its pod up, raise as the ladder decides (:func:`ladder_step`).

        OOM below the top -> :class:`PodOOMKilled` (the ladder state counts it first); disrupted
        with retries left -> :class:`PodDisrupted`; else :class:`PodFailed`. Recording and
        cleanup are best effort: their failures are logged and never change the outcome.
        """
        profile = self._profile_that_ran(termination)
        attempt = termination.attempt or int(context["ti"].try_number)
        limit = termination.memory_limit_bytes or profile.memory_bytes
        higher = None
        if termination.oom_killed:
            higher = self._best_effort("find the next profile", lambda: next_profile(profile.name, self._profiles))
        step = ladder_step(
            termination,
            factor=self.factor,
            profile=profile,
            higher=higher,
            attempt=attempt,
            limit=limit,
            state=self._ladder_state or LadderState(1),
            disruption_retries=self._settings.disruption_retries if self._settings is not None else 0,
        )
        self._record(
            context, termination, attempt=attempt, profile=profile, limit=limit, factor_failed=step.factor_failed
        )
        self._clean_failed_pod()
        if step.state is not None:
            self._save_ladder(step.state)
        raise _RAISED_FOR[step.outcome](step.message) from cause

    def _profile_that_ran(self, termination: PodTermination) -> PodProfile:
        """The profile of the pod that ran (its label), else this try's."""
        if termination.profile and termination.profile in self._profiles:
            return self._profiles[termination.profile]
        if self.attempt_profile is not None:
            return self.attempt_profile
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
        row = self._attempt_row(context, termination, attempt=attempt, profile=profile, limit=limit)
        # The pod's outcome is what the task reports; a lost record is logged, not raised.
        what = f"attempt {attempt} of factor {self.factor} ({row['exit_reason']})"
        record_quietly(self._conn_id, row, factor_failed=factor_failed, what=what, log=self.log)

    def _attempt_row(
        self, context: Context, termination: PodTermination, *, attempt: int, profile: PodProfile, limit: int
    ) -> dict[str, Any]:
        return attempt_row(
            termination,
            run_id=self._record_run_id(context),
            factor=self.factor,
            airflow_run_id=str(context["run_id"]),
            attempt=attempt,
            profile=profile,
            limit=limit,
            workers=self.workers,
        )

    def _best_effort(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; log and return None on any error (classification must not escape)."""
        try:
            return action()
        except Exception as exc:
            self.log.warning("could not %s: %s: %s", what, type(exc).__name__, exc)
            return None
