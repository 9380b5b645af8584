"""Plan entries and the manifests the KubernetesPodOperator builds from them (pod spec and template tests)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from finetune_rows import AS_OF, RUN_ID
from finetune_sweep.pods.render import render_manifest
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
    """What the operator would submit: the pod a KubernetesPodOperator builds from the entry."""
    settings = settings or make_settings()
    return render_manifest(factor_kwargs=entry, image=settings.image, settings=settings)
