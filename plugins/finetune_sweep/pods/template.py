"""The pod template (``FINETUNE_POD_TEMPLATE_FILE``) may add what a cluster needs, nothing else.

The KubernetesPodOperator merges the template *under* the spec built in :mod:`finetune_sweep.pods.spec`:
whatever the spec leaves unset, the template supplies. That is how a cluster adds tolerations,
``imagePullSecrets``, a priority class, node affinity, annotations and labels. But the same merge
passes on every other field of the pod too, and most of them widen it: a sidecar sharing the process
namespace reads the base process's environment (the DSN), a ``lifecycle`` hook runs beside it,
``hostAliases`` / ``dnsConfig`` point the database's host elsewhere, a projected
``serviceAccountToken`` volume brings back the token ``automountServiceAccountToken: false`` took
away, ``PG*`` variables redirect libpq. A deny-list of such fields lags behind Kubernetes, so this
is an **allow-list** over the template as written (camelCase YAML, before deserialisation, so a
misspelt or unknown field is refused too, not silently dropped):

- ``apiVersion``, ``kind``; ``metadata``: ``name`` (replaced by the operator's), ``annotations``,
  ``labels``;
- ``spec``: ``tolerations``, ``affinity``, ``nodeSelector``, ``imagePullSecrets``,
  ``priorityClassName``, and ``containers`` holding the ``base`` container entry alone, with only
  ``name``, ``env`` and ``envFrom``; no ``env`` name and no ``envFrom`` prefix may start with
  ``FINETUNE_`` or ``PG`` (the project's own settings and libpq's).

Anything else is **refused**, not trimmed: :func:`check_pod_template` raises one line naming every
offending field, and ``plan`` fails before any pod starts (``render`` and the operator likewise).
Refusing is safer than dropping: a silently dropped field leaves a pod that differs from what its
author reviewed, and a template that asks for more is a configuration to fix, not to half-apply.
What an ``envFrom`` Secret or ConfigMap holds cannot be seen offline; the DSN still wins over it
(Kubernetes lets ``env`` beat ``envFrom``), and its keys are the cluster owner's to review.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# The base container of the KubernetesPodOperator (its ``base_container_name``).
BASE_CONTAINER = "base"
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec")
METADATA_FIELDS = ("name", "annotations", "labels")
SPEC_FIELDS = ("tolerations", "affinity", "nodeSelector", "imagePullSecrets", "priorityClassName", "containers")
BASE_CONTAINER_FIELDS = ("name", "env", "envFrom")
# The project's own settings (the DSN among them) and libpq's environment (PGHOST, PGOPTIONS ...).
RESERVED_ENV_PREFIXES = ("FINETUNE_", "PG")
ALLOWED_FIELDS = (
    "metadata.annotations, metadata.labels, spec.tolerations, spec.affinity, spec.nodeSelector, "
    "spec.imagePullSecrets, spec.priorityClassName, and spec.containers with the base container alone "
    "(name, env, envFrom; no FINETUNE_* or PG* names)"
)


class PodTemplateError(ValueError):
    """The pod template is unreadable or would widen the pod; the one-line message names why."""


def _extra_fields(where: str, mapping: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    return [f"{where}{key}" for key in mapping if key not in allowed]


def _reserved(name: Any) -> bool:
    return isinstance(name, str) and name.upper().startswith(RESERVED_ENV_PREFIXES)


def _base_container_refusals(where: str, container: Mapping[str, Any]) -> list[str]:
    found = _extra_fields(f"{where}.", container, BASE_CONTAINER_FIELDS)
    env = container.get("env") or []
    if not isinstance(env, list):
        return [*found, f"{where}.env (not a list)"]
    for index, var in enumerate(env):
        name = var.get("name") if isinstance(var, Mapping) else None
        if not isinstance(var, Mapping) or not isinstance(name, str):
            found.append(f"{where}.env[{index}] (not a name/value entry)")
        elif _reserved(name):
            # the value itself is never shown: it may be a secret
            found.append(f"{where}.env {name} (FINETUNE_* and PG* are the project's and libpq's)")
    env_from = container.get("envFrom") or []
    if not isinstance(env_from, list):
        return [*found, f"{where}.envFrom (not a list)"]
    for index, source in enumerate(env_from):
        if not isinstance(source, Mapping):
            found.append(f"{where}.envFrom[{index}] (not a source entry)")
        elif _reserved(source.get("prefix")):
            found.append(f"{where}.envFrom[{index}].prefix {source['prefix']}")
    return found


def template_refusals(raw: Mapping[str, Any]) -> list[str]:
    """Every field of the template ``raw`` outside the allow-list, in the template's order.

    :param raw: the template as loaded from YAML (camelCase keys).
    """
    found = _extra_fields("", raw, TOP_LEVEL_FIELDS)
    metadata = raw.get("metadata") or {}
    if isinstance(metadata, Mapping):
        found += _extra_fields("metadata.", metadata, METADATA_FIELDS)
    else:
        found.append("metadata (not a mapping)")
    spec = raw.get("spec") or {}
    if not isinstance(spec, Mapping):
        return [*found, "spec (not a mapping)"]
    found += _extra_fields("spec.", spec, SPEC_FIELDS)
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        return [*found, "spec.containers (not a list)"]
    for index, container in enumerate(containers):
        name = container.get("name") if isinstance(container, Mapping) else None
        where = f"spec.containers[{index}] ({name})"
        if name != BASE_CONTAINER:
            found.append(where)
        else:
            found += _base_container_refusals(where, container)
    return found


def load_pod_template(path: str) -> dict[str, Any]:
    """The template as written (a YAML mapping); the KubernetesPodOperator reads the same file.

    :param path: ``FINETUNE_POD_TEMPLATE_FILE``.
    :raises PodTemplateError: missing, unreadable, not a pod, or without the base container.
    """
    import yaml

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
    spec = raw.get("spec")
    # the operator's merge needs the base container entry: without it, it fails with a traceback
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise PodTemplateError(
            f"FINETUNE_POD_TEMPLATE_FILE={path} has no spec.containers; "
            f"a template needs spec.containers: [{{name: {BASE_CONTAINER}}}]"
        )
    return raw


def check_pod_template(path: str | None) -> None:
    """Refuse a template that sets anything outside the allow-list, naming every such field in one line.

    :param path: ``FINETUNE_POD_TEMPLATE_FILE``; None: nothing to check.
    :raises PodTemplateError: the one line.
    """
    if path is None:
        return
    refusals = template_refusals(load_pod_template(path))
    if refusals:
        raise PodTemplateError(
            f"FINETUNE_POD_TEMPLATE_FILE={path} is refused, it sets fields a template may not: "
            f"{'; '.join(refusals)} (a template may set only {ALLOWED_FIELDS})"
        )
