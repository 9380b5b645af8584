"""The provider's pod managers as the factor pod uses them: sync (the operator) and async (its trigger).

Both watch a pod's start for a container that cannot be configured
(:class:`finetune_sweep.pods.startup.StartWatching`); the sync one also remembers the last status
it read of each pod, for classifying a pod that is gone by the time its failure is read.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.utils.pod_manager import AsyncPodManager, PodManager
from kubernetes.client import models as k8s

from finetune_sweep.pods.startup import StartWatching

__all__ = ["RememberingPodManager", "StartWatchingAsyncPodManager"]


class RememberingPodManager(StartWatching, PodManager):
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


class StartWatchingAsyncPodManager(StartWatching, AsyncPodManager):
    """The provider's async pod manager; a lasting config error ends a pod's start."""

    async def read_pod(self, pod: Any) -> Any:
        remote = await super().read_pod(pod)
        self.watch_start(remote)
        return remote
