"""What ends a pod's start early: a container the kubelet cannot configure, for longer than a grace.

The provider fails a pod's start fast on a bad image only; a container that cannot be created
from its config (waiting reason ``CreateContainerConfigError``: a missing Secret or key, a
missing ConfigMap) would hold the task for the whole startup timeout. The kubelet keeps retrying
such a container, so a Secret created within the grace still lets the pod start.

:class:`ConfigErrorWatch` is fed each status read while a pod starts, through the mixin
:class:`StartWatching`: by the operator's pod manager (sync mode) and by the trigger's
(deferrable mode, in the triggerer).
"""

from __future__ import annotations

import time
from typing import Any

from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchFailedException

from finetune_sweep.outcomes import CONFIG_ERROR_REASON


def config_error(pod: Any) -> str | None:
    """The kubelet's message for a container it cannot configure (``CreateContainerConfigError``), else None.

    :param pod: a ``V1Pod`` as read from the API (or None).
    """
    status = pod.status if pod is not None else None
    for container_status in (status.container_statuses if status else None) or []:
        waiting = container_status.state.waiting if container_status.state is not None else None
        if waiting is not None and waiting.reason == CONFIG_ERROR_REASON:
            return waiting.message or CONFIG_ERROR_REASON
    return None


class ConfigErrorWatch:
    """Fails a pod's start once a config error has lasted ``grace_seconds`` (None: never).

    :param grace_seconds: how long a container may stay ``CreateContainerConfigError``.
    """

    def __init__(self, grace_seconds: float | None) -> None:
        self.grace_seconds = grace_seconds
        self._since: float | None = None

    def reset(self) -> None:
        """A new start: no config error seen yet."""
        self._since = None

    def check(self, pod: Any) -> None:
        """Feed one status read of the starting pod.

        :raises PodLaunchFailedException: the config error has lasted the grace (the message is the
            kubelet's, e.g. ``secret "finetune-db" not found``).
        """
        if self.grace_seconds is None:
            return
        message = config_error(pod)
        if message is None:
            self._since = None
            return
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since >= self.grace_seconds:
            raise PodLaunchFailedException(f"{CONFIG_ERROR_REASON} for {self.grace_seconds:g} s: {message}")


class StartWatching:
    """Mixin for the provider's ``PodManager`` and ``AsyncPodManager``: while ``await_pod_start``
    runs, each status the manager's ``read_pod`` reads is passed to :meth:`watch_start`.

    :param config_error_grace_seconds: see :class:`ConfigErrorWatch`.
    """

    def __init__(self, *args: Any, config_error_grace_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_errors = ConfigErrorWatch(config_error_grace_seconds)
        self._starting = False

    async def await_pod_start(self, pod: Any, *args: Any, **kwargs: Any) -> None:
        self._starting = True
        self.config_errors.reset()
        try:
            await super().await_pod_start(pod, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._starting = False

    def watch_start(self, remote: Any) -> None:
        """Feed one status read; outside a start it is ignored."""
        if self._starting:
            self.config_errors.check(remote)
