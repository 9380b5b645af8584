"""The trigger of a deferred ``run_factor`` pod: the provider's, recording a user's kill as ``Killed``.

A deferred task has no worker: when a user marks it failed or succeeded, or clears it, Airflow
(3.3+) calls the trigger's ``on_kill`` in the triggerer instead of the operator's. The provider's
trigger deletes the pod there; this one then records the attempt as ``Killed`` -- what
``FactorPodOperator.on_kill`` records for a task killed while it runs on a worker -- so the
manifest and the sizing history never show the attempt as still running or as a pod failure.

The triggerer imports this module by its classpath (``plugins/`` is on every Airflow process's
path); it records with :mod:`finetune_sweep.db` (psycopg only), off the event loop.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger


class FactorPodTrigger(KubernetesPodTrigger):
    """``KubernetesPodTrigger`` that records the attempt it watches as ``Killed`` on a user's kill.

    :param killed_attempt: the ``finetune_pod_attempts`` row to record (the fields of
        :func:`finetune_sweep.db.record_attempt`, ``exit_reason`` included); None records nothing.
    :param finetune_conn_id: the Airflow connection of the finetune database.
    """

    def __init__(
        self, *, killed_attempt: dict[str, Any] | None = None, finetune_conn_id: str = "finetune_db", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.killed_attempt = killed_attempt
        self.finetune_conn_id = finetune_conn_id

    @classmethod
    def wrapping(
        cls, trigger: KubernetesPodTrigger, *, killed_attempt: dict[str, Any], finetune_conn_id: str
    ) -> FactorPodTrigger:
        """The same trigger (every argument the operator gave it), recording the kill."""
        _, kwargs = trigger.serialize()
        return cls(**kwargs, killed_attempt=killed_attempt, finetune_conn_id=finetune_conn_id)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        classpath = f"{type(self).__module__}.{type(self).__qualname__}"
        return classpath, {**kwargs, "killed_attempt": self.killed_attempt, "finetune_conn_id": self.finetune_conn_id}

    async def on_kill(self) -> None:
        await super().on_kill()  # deletes the pod (unless on_kill_action keeps it)
        if self.killed_attempt is None or self._fired_event:
            return  # the pod ended on its own first: the resumed task classifies and records it
        from asgiref.sync import sync_to_async

        await sync_to_async(self._record_killed)()

    def _record_killed(self) -> None:
        from finetune_sweep.db import dsn_from_connection, record_attempt, redact

        dsn: str | None = None
        try:
            dsn = dsn_from_connection(self.finetune_conn_id)
            record_attempt(dsn, self.killed_attempt, factor_failed=False)
        except Exception as exc:  # noqa: BLE001 - a lost record is logged; the kill stands
            self.log.error("could not record the killed attempt of factor %s: %s",
                           self.killed_attempt.get("factor"), redact(f"{type(exc).__name__}: {exc}", [dsn]))
        else:
            self.log.info("recorded attempt %s of factor %s as %s", self.killed_attempt.get("attempt"),
                          self.killed_attempt.get("factor"), self.killed_attempt.get("exit_reason"))
