"""Tests of finetune_sweep.pods.startup: a config error ends a pod's start only once it has lasted the grace."""

from __future__ import annotations

import time

import pytest
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchFailedException
from kubernetes.client import models as k8s

from fake_kube import set_pending, set_running, set_waiting
from finetune_sweep.pods.startup import ConfigErrorWatch, config_error

MISSING_SECRET = 'secret "finetune-db" not found'


def _pod(status) -> k8s.V1Pod:
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p", namespace="n"))
    status(pod)
    return pod


def _config_error_pod() -> k8s.V1Pod:
    return _pod(lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=MISSING_SECRET))


def test_only_a_config_error_is_one() -> None:
    assert config_error(_config_error_pod()) == MISSING_SECRET
    assert config_error(_pod(lambda pod: set_waiting(pod, reason="ContainerCreating", message="pulling"))) is None
    assert config_error(_pod(set_running)) is None and config_error(_pod(set_pending)) is None
    assert config_error(None) is None


def test_the_start_fails_once_the_error_has_lasted_the_grace() -> None:
    watch = ConfigErrorWatch(0.2)
    watch.check(_config_error_pod())  # first seen: the kubelet retries, the Secret may appear

    time.sleep(0.25)
    with pytest.raises(PodLaunchFailedException, match=rf"CreateContainerConfigError for 0.2 s: {MISSING_SECRET}"):
        watch.check(_config_error_pod())


def test_an_error_that_clears_starts_the_grace_anew() -> None:
    watch = ConfigErrorWatch(0.2)
    watch.check(_config_error_pod())
    time.sleep(0.25)
    watch.check(_pod(set_pending))  # the Secret was created: the container is being created

    watch.check(_config_error_pod())  # a new error: a new grace, no failure yet


def test_a_zero_grace_fails_at_once_and_no_grace_never_does() -> None:
    watch = ConfigErrorWatch(0.0)
    watch.reset()
    with pytest.raises(PodLaunchFailedException):
        watch.check(_config_error_pod())

    unbounded = ConfigErrorWatch(None)
    unbounded.check(_config_error_pod())
    unbounded.check(_config_error_pod())
