"""The pod of a factor as Kubernetes sees it: spec pieces (:mod:`.spec`), the pod template guard
(:mod:`.template`), start-up watching (:mod:`.startup`), how a pod attempt ended
(:mod:`.termination`), and the manifest ``render`` prints (:mod:`.render`).

The spec's names stay importable from the package, as they were from the former ``pods`` module
(DESIGN 2), e.g. ``from finetune_sweep.pods import common_pod_kwargs, factor_pod_kwargs``.
"""

from finetune_sweep.pods.spec import (
    CPU_REQUEST_ENV,
    DB_URL_ENV,
    LABEL_FACTOR,
    LABEL_PROFILE,
    LABEL_RUN_ID,
    MEMORY_LIMIT_ENV,
    WORKERS_ENV,
    common_pod_kwargs,
    db_secret,
    factor_pod_kwargs,
    pod_labels,
    resources_for,
    run_arguments,
    to_resource_requirements,
    with_profile,
)

__all__ = [
    "DB_URL_ENV",
    "LABEL_FACTOR",
    "LABEL_PROFILE",
    "LABEL_RUN_ID",
    "CPU_REQUEST_ENV",
    "MEMORY_LIMIT_ENV",
    "WORKERS_ENV",
    "common_pod_kwargs",
    "db_secret",
    "factor_pod_kwargs",
    "pod_labels",
    "resources_for",
    "run_arguments",
    "to_resource_requirements",
    "with_profile",
]
