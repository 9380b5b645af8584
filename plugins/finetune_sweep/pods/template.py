"""The pod template (``FINETUNE_POD_TEMPLATE_FILE``) may add what a cluster needs, never widen the pod.

The KubernetesPodOperator merges the template *under* the spec built in :mod:`finetune_sweep.pods.spec`:
whatever the spec leaves unset, the template supplies. That is how a cluster adds tolerations,
``imagePullSecrets``, a priority class, node affinity, annotations and labels, and those still
merge. But the same merge lets a template switch on host namespaces, mount host paths, run
privileged or as root, turn the service-account token back on (``False`` counts as unset in the
merge), or give the container another database DSN than the Secret's.

Such a template is **refused**, not trimmed: :func:`check_pod_template` raises one line naming
every offending field, and ``plan`` fails before any pod starts (``render`` likewise). Refusing
is safer than dropping: a silently dropped field leaves a pod that differs from what its author
reviewed, and a template that asks for host access is a configuration to fix, not to half-apply.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from finetune_sweep.pods.spec import DB_URL_ENV

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

MERGED_FROM_TEMPLATE = (
    "tolerations, imagePullSecrets, priorityClassName, affinity, nodeSelector, annotations, labels, "
    "the base container's env and envFrom (not FINETUNE_DB_URL)"
)


class PodTemplateError(ValueError):
    """The pod template is unreadable or would widen the pod; the one-line message names why."""


def _container_widenings(where: str, container: k8s.V1Container, *, db_secret: tuple[str, str]) -> list[str]:
    found: list[str] = []
    context = container.security_context
    if context is not None:
        if context.privileged:
            found.append(f"{where}.securityContext.privileged")
        if context.allow_privilege_escalation:
            found.append(f"{where}.securityContext.allowPrivilegeEscalation")
        if context.capabilities is not None and context.capabilities.add:
            found.append(f"{where}.securityContext.capabilities.add {list(context.capabilities.add)}")
        found += _identity_widenings(f"{where}.securityContext", context)
        if context.proc_mount == "Unmasked":
            found.append(f"{where}.securityContext.procMount Unmasked")
    for var in container.env or []:
        if var.name != DB_URL_ENV:
            continue
        ref = var.value_from.secret_key_ref if var.value_from is not None else None
        if ref is None or (ref.name, ref.key) != db_secret:
            source = "a literal value" if var.value_from is None else "another source"
            # the value itself is never shown: it may be the secret
            found.append(f"{where}.env {DB_URL_ENV} from {source} (the DSN comes from Secret {db_secret[0]})")
    return found


def _identity_widenings(where: str, context: Any) -> list[str]:
    found = []
    if context.run_as_user == 0:
        found.append(f"{where}.runAsUser 0")
    if context.run_as_non_root is False:
        found.append(f"{where}.runAsNonRoot false")
    profile = context.seccomp_profile
    if profile is not None and profile.type == "Unconfined":
        found.append(f"{where}.seccompProfile Unconfined")
    return found


def _containers(spec: k8s.V1PodSpec) -> Iterable[tuple[str, Any]]:
    for field, name in (
        ("containers", "containers"),
        ("init_containers", "initContainers"),
        ("ephemeral_containers", "ephemeralContainers"),
    ):
        for index, container in enumerate(getattr(spec, field) or []):
            yield f"spec.{name}[{index}] ({container.name})", container


def pod_widenings(pod: k8s.V1Pod, *, db_secret: tuple[str, str]) -> list[str]:
    """Every field of ``pod`` (a template) that would widen the finetune pod, in spec order.

    :param pod: the template as the KubernetesPodOperator reads it.
    :param db_secret: ``(name, key)`` of the database Secret: the only allowed DSN source.
    """
    spec = pod.spec
    if spec is None:
        return []
    found = [
        f"spec.{name}"
        for field, name in (("host_pid", "hostPID"), ("host_network", "hostNetwork"), ("host_ipc", "hostIPC"))
        if getattr(spec, field)
    ]
    if spec.automount_service_account_token:
        found.append("spec.automountServiceAccountToken true")
    for index, volume in enumerate(spec.volumes or []):
        if volume.host_path is not None:
            found.append(f"spec.volumes[{index}] ({volume.name}) hostPath {volume.host_path.path}")
    if spec.security_context is not None:
        found += _identity_widenings("spec.securityContext", spec.security_context)
    for where, container in _containers(spec):
        found += _container_widenings(where, container, db_secret=db_secret)
    return found


def load_pod_template(path: str) -> k8s.V1Pod:
    """The template as the KubernetesPodOperator reads it.

    :param path: ``FINETUNE_POD_TEMPLATE_FILE``.
    :raises PodTemplateError: missing, unreadable or not a pod.
    """
    import yaml
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    # the operator would take a missing file for an empty template, with only a log warning
    if not os.path.isfile(path):
        raise PodTemplateError(f"FINETUNE_POD_TEMPLATE_FILE={path} does not exist (or is not a file)")
    try:
        with open(path) as stream:
            raw = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        raise PodTemplateError(f"FINETUNE_POD_TEMPLATE_FILE={path} cannot be read: {reason}") from None
    if not isinstance(raw, dict):
        raise PodTemplateError(f"FINETUNE_POD_TEMPLATE_FILE={path} is not a pod manifest (a YAML mapping)")
    return PodGenerator.deserialize_model_dict(raw)


def check_pod_template(path: str | None, *, db_secret: tuple[str, str]) -> None:
    """Refuse a template that would widen the pod, naming every offending field in one line.

    :param path: ``FINETUNE_POD_TEMPLATE_FILE``; None: nothing to check.
    :param db_secret: ``(name, key)`` of the database Secret.
    :raises PodTemplateError: the one line.
    """
    if path is None:
        return
    widenings = pod_widenings(load_pod_template(path), db_secret=db_secret)
    if widenings:
        raise PodTemplateError(
            f"FINETUNE_POD_TEMPLATE_FILE={path} is refused, it would widen the pod: {'; '.join(widenings)} "
            f"(a template may add {MERGED_FROM_TEMPLATE})"
        )
