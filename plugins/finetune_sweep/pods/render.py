"""The manifest a factor's pod would be submitted with, built offline (``render`` prints it).

camelCase like ``kubectl get -o yaml``, built by the KubernetesPodOperator itself
(``build_pod_request_obj(dry_run=True)``) from a plan entry, so it shows exactly what ``plan``
and the operator produce (the pod template merged in).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from finetune_sweep.pods.spec import (
    WORKERS_ENV,
    common_pod_kwargs,
    profile_affinity,
    profile_tolerations,
    to_resource_requirements,
)
from finetune_sweep.sizing.profiles import profiles_from_json

if TYPE_CHECKING:
    from finetune_sweep.settings import Settings


def render_manifest(*, factor_kwargs: Mapping[str, Any], image: str, settings: Settings) -> dict[str, Any]:
    """The camelCase pod manifest the KubernetesPodOperator would submit, built offline.

    :param factor_kwargs: one entry of the plan (:func:`factor_pod_kwargs`).
    :param image: the full image reference.
    :param settings: the settings.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s

    kwargs = {**common_pod_kwargs(image=image, settings=settings), **factor_kwargs}
    kwargs.pop("factor", None)
    profile_name = kwargs.pop("profile", None)
    ladder = kwargs.pop("profiles", None)
    workers = kwargs.pop("workers", None)
    if workers is not None:  # as the operator sets it on every try
        kwargs["env_vars"] = [*kwargs.get("env_vars", []), k8s.V1EnvVar(name=WORKERS_ENV, value=str(workers))]
    if ladder and profile_name in ladder:
        start = profiles_from_json(ladder)[profile_name]
        kwargs["tolerations"] = [*kwargs.get("tolerations", []), *profile_tolerations(start)]
        kwargs["affinity"] = profile_affinity(start) or kwargs.get("affinity")
    kwargs["container_resources"] = to_resource_requirements(kwargs["container_resources"])
    operator = KubernetesPodOperator(task_id="run_factor", **kwargs)
    # The operator logs "Building pod ..." to stdout; keep stdout for the manifest alone.
    with contextlib.redirect_stdout(sys.stderr):
        pod = operator.build_pod_request_obj(None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)
