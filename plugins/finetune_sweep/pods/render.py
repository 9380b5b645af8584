"""``python -m finetune_sweep.pods.render`` (also ``python -m finetune_sweep.pods render``): a pod's manifest.

Prints the manifest that would be submitted for a factor, camelCase like ``kubectl get -o yaml``,
built offline by the KubernetesPodOperator itself (``build_pod_request_obj(dry_run=True)``) from
the plan's entry, so it shows exactly what ``plan`` and the operator would produce (the pod
template merged in; a template that would widen the pod is refused, as in ``plan``).

Its own module because it needs both the pod pieces and the planning: ``planning`` imports
``pods``, and ``pods`` imports neither.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from finetune_sweep.pods.spec import common_pod_kwargs, profile_affinity, profile_tolerations, to_resource_requirements

if TYPE_CHECKING:
    from finetune_sweep.settings import Settings


def render_manifest(
    *, factor_kwargs: Mapping[str, Any], image: str, settings: Settings | None = None
) -> dict[str, Any]:
    """The camelCase pod manifest the KubernetesPodOperator would submit, built offline.

    :param factor_kwargs: one entry of the plan (:func:`factor_pod_kwargs`).
    :param image: the full image reference.
    :param settings: the settings (default: the process settings).
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient

    kwargs = {**common_pod_kwargs(image=image, settings=settings), **factor_kwargs}
    kwargs.pop("factor", None)
    profile_name = kwargs.pop("profile", None)
    ladder = kwargs.pop("profiles", None)
    if ladder and profile_name in ladder:
        from finetune_sweep.sizing.profiles import profiles_from_json

        start = profiles_from_json(ladder)[profile_name]
        kwargs["tolerations"] = [*kwargs.get("tolerations", []), *profile_tolerations(start)]
        kwargs["affinity"] = profile_affinity(start) or kwargs.get("affinity")
    kwargs["container_resources"] = to_resource_requirements(kwargs["container_resources"])
    operator = KubernetesPodOperator(task_id="run_factor", **kwargs)
    # The operator logs "Building pod ..." to stdout; keep stdout for the manifest alone.
    with contextlib.redirect_stdout(sys.stderr):
        pod = operator.build_pod_request_obj(None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def main(argv: Sequence[str] | None = None) -> int:
    """``render --factor F [--run-id R] [--as-of T] [--image-tag T] [--output json|yaml]``.

    Uses the DAG's default params, ``FINETUNE_PROFILES`` / ``FINETUNE_SIZING`` and the settings.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    from finetune_sweep.sweep.plan import PlanError, default_params, plan_pods
    from finetune_sweep.pods.template import PodTemplateError, check_pod_template
    from finetune_sweep.settings import get_settings, sizing_overrides

    parser = argparse.ArgumentParser(prog="python -m finetune_sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="print the pod manifest of one factor (offline dry run)")
    render.add_argument("--factor", required=True)
    render.add_argument("--run-id", default="manual__render")
    render.add_argument("--as-of", default="2026-01-04T00:00:00Z", help="ISO time (the run's data interval end)")
    render.add_argument("--image-tag", help="tag instead of the pinned one (the DAG param image)")
    render.add_argument("--output", choices=("json", "yaml"), default="yaml")
    args = parser.parse_args(argv)

    settings = get_settings()
    params = default_params()
    params["factors"] = [args.factor]
    if args.image_tag:
        params["image"] = args.image_tag
    profiles_json, sizing_json = sizing_overrides()
    try:
        check_pod_template(settings.pod_template_file, db_secret=(settings.db_secret_name, settings.db_secret_key))
        (entry,) = plan_pods(
            params,
            run_id=args.run_id,
            as_of=args.as_of,
            profiles_json=profiles_json,
            sizing_json=sizing_json,
            data_uri=settings.data_uri,
            settings=settings,
        )
    except (PlanError, PodTemplateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = render_manifest(factor_kwargs=entry, image=settings.image_with_tag(params["image"]), settings=settings)
    if args.output == "json":
        print(json.dumps(manifest, indent=2, sort_keys=False))
    else:
        import yaml

        print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    # Run through the package module, so its classes are the ones every other module imports.
    from finetune_sweep.pods.render import main as _main

    sys.exit(_main())
