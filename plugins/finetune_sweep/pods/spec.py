"""Pod spec pieces shared by every finetune pod: resources, labels, env and secrets, security.

``common_pod_kwargs`` goes to ``FactorPodOperator.partial(...)`` (and to ``migrate``);
``factor_pod_kwargs`` builds one ``expand_kwargs`` entry per factor. The per-factor entries travel
through XCom, so they hold only JSON values (``container_resources`` as a plain dict, turned into
``V1ResourceRequirements`` before the pod is built, see :func:`to_resource_requirements`).

``python -m finetune_sweep render --factor F`` prints the manifest that would be submitted for a
factor (:mod:`finetune_sweep.pods.render`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from finetune_sweep.sizing.profiles import PodProfile, profiles_to_json

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

    from finetune_sweep.settings import Settings

CONTAINER_UID = 10001
MEMORY_LIMIT_ENV = "FINETUNE_MEMORY_LIMIT_BYTES"
# The container's cpu request in whole cpus (rounded up): the pod runs that many worker processes
# (finetune.workers), unless FINETUNE_POD_WORKERS says otherwise.
CPU_REQUEST_ENV = "FINETUNE_CPU_REQUEST"
DB_URL_ENV = "FINETUNE_DB_URL"
# Set per try by the operator: the profile and try number the pod runs on, and the Airflow run
# (with the try number it keys the attempt history, V007).
PROFILE_ENV = "FINETUNE_PROFILE"
ATTEMPT_ENV = "FINETUNE_ATTEMPT"
# Worker processes of the pod (sizing.profiles.pod_workers of the planned profile, every try).
WORKERS_ENV = "FINETUNE_POD_WORKERS"
AIRFLOW_RUN_ENV = "FINETUNE_AIRFLOW_RUN_ID"
# Label keys: the recommended app.kubernetes.io set plus the sweep's own dimensions.
LABEL_FACTOR = "finetune/factor"
LABEL_PROFILE = "finetune/profile"
LABEL_RUN_ID = "finetune/run-id"

# The order of the options after ``run`` (design 4.1); each maps a run_args key to its flag.
RUN_ARG_ORDER = (
    "cryptos",
    "cost_bps",
    "slippage_bps",
    "as_of",
    "n_folds",
    "n_seeds",
    "n_shifts",
    "hold_bars",
    "train_bars",
    "test_bars",
    "model",
    "data_uri",
)

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_MAX = 63


def label_value(value: str) -> str:
    """A valid Kubernetes label value for ``value``: itself when valid, else sanitised + hash.

    Invalid characters become ``-`` and the value is trimmed; a changed value gets a short hash of
    the original so that two run ids that sanitise alike stay distinct.

    :param value: any string (e.g. ``manual__2026-06-07T00:00:00+00:00``).
    """
    if len(value) <= _LABEL_MAX and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^-A-Za-z0-9_.]+", "-", value)
    cleaned = cleaned[: _LABEL_MAX - len(digest) - 1].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def dns_name(value: str) -> str:
    """A DNS-1123 name fragment (lower case, ``-`` for anything else), e.g. ``base-features``.

    :param value: e.g. a factor name.
    """
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:50] or "pod"


def resources_for(profile: PodProfile) -> dict[str, dict[str, str]]:
    """Container resources of a profile: memory request = limit, a cpu request, no cpu limit.

    Request = limit for memory: the pod is placed only where its limit fits, and under node memory
    pressure it is never evicted for using more than it asked for. The pod's QoS class is
    Burstable, not Guaranteed (that would need a cpu limit equal to the request too): no cpu
    limit, because CFS throttling slows a numpy job without protecting anything.

    :param profile: the pod profile.
    """
    return {
        "requests": {"memory": profile.memory, "cpu": profile.cpu},
        "limits": {"memory": profile.memory},
    }


def to_resource_requirements(
    resources: Mapping[str, Mapping[str, str]] | k8s.V1ResourceRequirements,
) -> k8s.V1ResourceRequirements:
    """``container_resources`` as ``V1ResourceRequirements`` (it arrives as a dict through XCom).

    :param resources: ``{"requests": {...}, "limits": {...}}`` or already the model.
    """
    from kubernetes.client import models as k8s

    if isinstance(resources, k8s.V1ResourceRequirements):
        return resources
    return k8s.V1ResourceRequirements(
        requests=dict(resources.get("requests") or {}) or None,
        limits=dict(resources.get("limits") or {}) or None,
    )


def as_resource_requirements(value: Any) -> Any:
    """``container_resources`` as ``V1ResourceRequirements`` when it arrives as a plain dict.

    Quantities are strings (with ``render_template_as_native_obj`` a cpu ``"1"`` renders as 1).

    :param value: a dict ``{"requests": {...}, "limits": {...}}``, the model, or None.
    """
    if not isinstance(value, Mapping):
        return value
    return to_resource_requirements(
        {part: {name: str(q) for name, q in (value.get(part) or {}).items()} for part in ("requests", "limits")}
    )


def profile_tolerations(profile: PodProfile) -> list[k8s.V1Toleration]:
    """The profile's tolerations as client models (they are camelCase JSON on the profile).

    :param profile: the pod profile.
    """
    from kubernetes.client import models as k8s

    return [
        k8s.V1Toleration(
            key=item.get("key"),
            operator=item.get("operator"),
            value=item.get("value"),
            effect=item.get("effect"),
            toleration_seconds=item.get("tolerationSeconds"),
        )
        for item in profile.tolerations
    ]


def profile_affinity(profile: PodProfile) -> k8s.V1Affinity | None:
    """The profile's node/pod affinity as a client model, or None.

    :param profile: the pod profile.
    """
    if not profile.affinity:
        return None
    from kubernetes.client import ApiClient

    # The client's own deserializer turns camelCase JSON into the nested models (as the
    # KubernetesPodOperator does for a pod template).
    return ApiClient()._ApiClient__deserialize(profile.affinity, "V1Affinity")  # type: ignore[attr-defined]


def pod_labels(*, factor: str, profile: str, run_id: str) -> dict[str, str]:
    """Labels of a factor pod; every value is label-safe (<= 63 chars, valid characters).

    :param factor: the factor.
    :param profile: the profile name (stored in lower case, like the node pool label).
    :param run_id: the finetune run id (the Airflow run id; sanitised here).
    """
    return {
        "app.kubernetes.io/name": "finetune-sweep",
        "app.kubernetes.io/component": "factor",
        LABEL_FACTOR: label_value(factor),
        LABEL_PROFILE: label_value(profile.lower()),
        LABEL_RUN_ID: label_value(run_id),
    }


def db_secret(settings: Settings) -> Any:
    """The database URI as an env var from the Kubernetes Secret named in the settings.

    :param settings: the settings.
    """
    from airflow.providers.cncf.kubernetes.secret import Secret

    return Secret("env", DB_URL_ENV, settings.db_secret_name, settings.db_secret_key)


def common_pod_kwargs(*, image: str, settings: Settings) -> dict[str, Any]:
    """Operator kwargs shared by every finetune pod (for ``.partial(...)`` and ``migrate``).

    :param image: the full image reference (``repository:tag``; may be a template such as
        ``repo:{{ params.image }}`` since partial arguments are rendered).
    :param settings: the settings.
    """
    from kubernetes.client import models as k8s

    kwargs: dict[str, Any] = {
        "namespace": settings.namespace,
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "cmds": ["python", "-m", "finetune"],
        "secrets": [db_secret(settings)],
        "env_vars": [
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            # The root filesystem is read-only: anything that wants a home writes to /tmp.
            k8s.V1EnvVar(name="HOME", value="/tmp"),
            # Statement/lock timeouts and retry budget of the pod's database connections.
            *(k8s.V1EnvVar(name=name, value=value) for name, value in settings.pod_database_env),
        ],
        # The pod reports its peak against the limit it really got, and sizes its workers by the
        # cpu it really requested (the downward API, not the plan).
        "pod_runtime_info_envs": [
            k8s.V1EnvVar(
                name=name,
                value_from=k8s.V1EnvVarSource(
                    resource_field_ref=k8s.V1ResourceFieldSelector(resource=resource, divisor="1")
                ),
            )
            for name, resource in ((MEMORY_LIMIT_ENV, "limits.memory"), (CPU_REQUEST_ENV, "requests.cpu"))
        ],
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=CONTAINER_UID,
            run_as_group=CONTAINER_UID,
            fs_group=CONTAINER_UID,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        "container_security_context": k8s.V1SecurityContext(
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        # A disk-backed emptyDir (not medium=Memory, which would count against the memory limit).
        "volumes": [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="2Gi"))],
        "volume_mounts": [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        "automount_service_account_token": False,
        "on_finish_action": "delete_succeeded_pod",
        "get_logs": True,
        "log_events_on_failure": True,
        # Heavy nodes may have to be scaled up before the pod is scheduled (the long wait); once
        # scheduled, a pod that does not start soon (a missing DSN Secret leaves it in
        # CreateContainerConfigError forever) fails after the short startup timeout.
        "schedule_timeout_seconds": settings.schedule_timeout_seconds,
        "startup_timeout_seconds": settings.startup_timeout_seconds,
    }
    if settings.service_account:
        kwargs["service_account_name"] = settings.service_account
    if settings.pod_template_file:
        # The KubernetesPodOperator merges the template under the spec built here.
        kwargs["pod_template_file"] = settings.pod_template_file
    return kwargs


def run_arguments(*, run_id: str, factor: str, run_args: Mapping[str, Any]) -> list[str]:
    """The container args of ``python -m finetune run`` (design 4.1).

    :param run_id: the finetune run id.
    :param factor: the factor.
    :param run_args: values keyed like :data:`RUN_ARG_ORDER` (lists are joined with commas;
        None is left out).
    """
    unknown = sorted(set(run_args) - set(RUN_ARG_ORDER))
    if unknown:
        raise ValueError(f"unknown run argument(s): {', '.join(unknown)}")
    args = ["run", "--run-id", run_id, "--factor", factor]
    for key in RUN_ARG_ORDER:
        value = run_args.get(key)
        if value is None:
            continue
        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        args += ["--" + key.replace("_", "-"), text]
    return args


def argument_value(arguments: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in container args (``--run-id R`` or ``--run-id=R``), the inverse of
    :func:`run_arguments`; None when absent or without a value (as the pod's argparse reads them:
    a flag followed by another flag, or ``--run-id=``, gives no value).

    :param arguments: the container's args.
    :param flag: e.g. ``--run-id``.
    """
    for index, argument in enumerate(arguments):
        if argument == flag:
            value = arguments[index + 1] if index + 1 < len(arguments) else ""
            return None if not value or value.startswith("--") else value
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1] or None
    return None


def n_pod_keys(run_args: Mapping[str, Any]) -> int:
    """How many keys (crypto x fold x cost_bps x slippage_bps) one factor pod persists.

    :param run_args: the run options, see :func:`run_arguments`.
    """
    return (
        len(run_args["cryptos"]) * int(run_args["n_folds"]) * len(run_args["cost_bps"]) * len(run_args["slippage_bps"])
    )


def pod_deadline_seconds(*, n_keys: int, per_key_seconds: int, startup_seconds: int, fixed: int | None = None) -> int:
    """The pod's ``activeDeadlineSeconds``: a bound on the whole ``run_factor`` pod.

    A hung database (a lock never released, a stuck server) must not hold a run, and with
    ``max_active_runs=1`` the schedule, forever: past this bound Kubernetes (or the local
    backend) stops the pod with reason ``DeadlineExceeded``. Sized from the sweep, so that a big
    sweep is not cut short: ``startup + keys x per-key allowance``, unless fixed.

    :param n_keys: keys of the pod (:func:`n_pod_keys`).
    :param per_key_seconds: allowance per key (``FINETUNE_POD_DEADLINE_PER_KEY_SECONDS``).
    :param startup_seconds: allowance for data loading and connecting (``..._STARTUP_SECONDS``).
    :param fixed: ``FINETUNE_POD_DEADLINE_SECONDS``, which wins when set.
    """
    if fixed is not None:
        return fixed
    return startup_seconds + n_keys * per_key_seconds


def factor_pod_kwargs(
    *,
    factor: str,
    profile: PodProfile,
    run_id: str,
    run_args: Mapping[str, Any],
    profiles: Mapping[str, PodProfile] | None = None,
    active_deadline_seconds: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """One ``expand_kwargs`` entry: the pod of one factor (JSON values only, it goes via XCom).

    :param factor: the factor.
    :param profile: the profile it starts on (the operator moves it up after an OOM).
    :param run_id: the finetune run id.
    :param run_args: the run options, see :func:`run_arguments`.
    :param profiles: the run's resolved profile ladder, carried as the ``profiles`` key so the
        worker sizes every try from it (never re-reading ``FINETUNE_PROFILES``); None leaves the
        key out (the operator then reads the overrides itself).
    :param active_deadline_seconds: the bound on the pod (:func:`pod_deadline_seconds`); None:
        unbounded (the key is then left out).
    :param workers: the pod's worker processes on every try (``sizing.profiles.pod_workers`` of
        the map profile); None leaves the key out (the operator then sizes them per try).
    """
    entry = {
        "factor": factor,
        "profile": profile.name,
        "name": f"finetune-{dns_name(factor)}",
        "labels": pod_labels(factor=factor, profile=profile.name, run_id=run_id),
        "container_resources": resources_for(profile),
        "node_selector": dict(profile.node_selector),
        "arguments": run_arguments(run_id=run_id, factor=factor, run_args=run_args),
    }
    if profiles is not None:
        entry["profiles"] = profiles_to_json(profiles)
    if active_deadline_seconds is not None:
        entry["active_deadline_seconds"] = active_deadline_seconds
    if workers is not None:
        entry["workers"] = workers
    return entry


def with_profile(entry: Mapping[str, Any], *, profile: PodProfile) -> dict[str, Any]:
    """A plan entry moved to another starting profile (``register`` applies the sizing history).

    ``profile``, ``container_resources``, the profile label and ``node_selector`` follow the new
    profile; every other key (arguments, name, keys other components add at plan time) passes
    through unchanged.

    :param entry: one entry of the plan (:func:`factor_pod_kwargs`).
    :param profile: the profile the factor starts on.
    """
    return {
        **entry,
        "profile": profile.name,
        "labels": {**entry.get("labels", {}), LABEL_PROFILE: label_value(profile.name.lower())},
        "container_resources": resources_for(profile),
        "node_selector": dict(profile.node_selector),
    }
