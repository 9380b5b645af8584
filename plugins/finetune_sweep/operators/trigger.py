"""The trigger of a deferred ``run_factor`` pod: the provider's, recording a user's kill as ``Killed``
and failing a start stuck on a container config error (a missing Secret) after the grace.

A deferred task has no worker: when a user marks it failed or succeeded, or clears it, Airflow
(3.3+) calls the trigger's ``on_kill`` in the triggerer instead of the operator's. The provider's
trigger deletes the pod there; this one then records the attempt as ``Killed`` -- what
``FactorPodOperator.on_kill`` records for a task killed while it runs on a worker -- so the
manifest and the sizing history never show the attempt as still running or as a pod failure.

While the pod starts, its status reads go through :class:`finetune_sweep.pods.startup.ConfigErrorWatch`
as in sync mode: ``CreateContainerConfigError`` lasting ``config_error_grace_seconds`` ends the
wait with the kubelet's message instead of the startup timeout.

The triggerer imports this module by its classpath (``plugins/`` is on every Airflow process's
path); it records with :mod:`finetune_sweep.operators.recording` (psycopg only), off the event loop.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from asgiref.sync import sync_to_async

from finetune_sweep.operators.pod_managers import StartWatchingAsyncPodManager
from finetune_sweep.operators.recording import record_quietly

__all__ = ["FactorPodTrigger"]


class FactorPodTrigger(KubernetesPodTrigger):
    """``KubernetesPodTrigger`` that records the attempt it watches as ``Killed`` on a user's kill.

    :param killed_attempt: the ``finetune_pod_attempts`` row to record (the fields of
        :func:`finetune_sweep.operators.recording.attempt_row`, ``exit_reason`` included); None records nothing.
    :param finetune_conn_id: the Airflow connection of the finetune database.
    :param config_error_grace_seconds: how long a container may stay ``CreateContainerConfigError``
        while the pod starts (``FINETUNE_CONFIG_ERROR_GRACE_SECONDS``); None: until the startup timeout.
    """

    def __init__(
        self,
        *,
        killed_attempt: dict[str, Any] | None = None,
        finetune_conn_id: str = "finetune_db",
        config_error_grace_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.killed_attempt = killed_attempt
        self.finetune_conn_id = finetune_conn_id
        self.config_error_grace_seconds = config_error_grace_seconds

    @classmethod
    def wrapping(cls, trigger: KubernetesPodTrigger, **ours: Any) -> FactorPodTrigger:
        """The same trigger (every argument the operator gave it), with this class's arguments."""
        _, kwargs = trigger.serialize()
        return cls(**kwargs, **ours)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        classpath = f"{type(self).__module__}.{type(self).__qualname__}"
        return classpath, {
            **kwargs,
            "killed_attempt": self.killed_attempt,
            "finetune_conn_id": self.finetune_conn_id,
            "config_error_grace_seconds": self.config_error_grace_seconds,
        }

    @cached_property
    def pod_manager(self) -> StartWatchingAsyncPodManager:  # type: ignore[override]
        return StartWatchingAsyncPodManager(
            async_hook=self.hook, config_error_grace_seconds=self.config_error_grace_seconds
        )

    async def on_kill(self) -> None:
        await super().on_kill()  # deletes the pod (unless on_kill_action keeps it)
        if self.killed_attempt is None or self._fired_event:
            return  # the pod ended on its own first: the resumed task classifies and records it
        await sync_to_async(self._record_killed)()

    def _record_killed(self) -> None:
        what = f"the killed attempt of factor {self.killed_attempt.get('factor')}"
        if record_quietly(self.finetune_conn_id, self.killed_attempt, factor_failed=False, what=what, log=self.log):
            self.log.info(
                "recorded attempt %s of factor %s as %s",
                self.killed_attempt.get("attempt"),
                self.killed_attempt.get("factor"),
                self.killed_attempt.get("exit_reason"),
            )
