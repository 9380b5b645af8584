"""Plan entries and the manifests the KubernetesPodOperator builds from them (pod spec and template tests)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

from finetune_rows import AS_OF, RUN_ID
from finetune_sweep.pods import spec as pods
from finetune_sweep.settings import Settings
from finetune_sweep.sweep.params import default_params
from finetune_sweep.sweep.plan import plan_pods

K8S_VERSION = kubernetes_validate.latest_version()


def make_settings(**overrides: Any) -> Settings:
    """Settings with the cluster names the tests expect, and ``overrides``."""
    return Settings(**{"namespace": "finetune", "db_secret_name": "finetune-db", "db_secret_key": "dsn", **overrides})


def make_entry(factor: str, **overrides: Any) -> dict[str, Any]:
    """The plan entry of ``factor`` on the default params with ``overrides``."""
    params = {**default_params(), "factors": [factor], **overrides}
    (entry,) = plan_pods(params, run_id=RUN_ID, as_of=AS_OF)
    return entry


def build_manifest(entry: dict[str, Any], *, settings: Settings | None = None) -> dict[str, Any]:
    """What the operator would submit: the pod of a KubernetesPodOperator built from the kwargs."""
    settings = settings or make_settings()
    kwargs = {**pods.common_pod_kwargs(image=settings.image, settings=settings), **entry}
    kwargs.pop("factor")
    kwargs.pop("profile")
    kwargs.pop("profiles", None)
    kwargs["container_resources"] = pods.to_resource_requirements(kwargs["container_resources"])
    operator = KubernetesPodOperator(task_id="run_factor", **kwargs)
    pod = operator.build_pod_request_obj(None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)
