"""The sweep's params: one JSON schema per param, for the trigger form and again at run time.

The same schemas serve twice: as ``Param`` objects for the trigger form (and the trigger-time
check of REST/CLI conf), and again inside ``plan`` at run time, because a run can start with conf
that never met the form (an old REST client, ``dags test --conf``, a cleared run). The run-time
check also refuses unknown conf keys, which Airflow accepts silently, and turns 10.0 into 10.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from finetune_sweep.findings import DEFAULT_FDR_Q, DEFAULT_N_SHIFTS
from finetune_sweep.settings import DEFAULT_MODEL
from finetune_sweep.sizing.profiles import SIZING_MAP, SizingError, load_sizing

if TYPE_CHECKING:
    from airflow.sdk import Param

# The built-in model: the strategy of a run that does not choose another (DAG param ``model``).
STRATEGY = DEFAULT_MODEL


def whole(pattern: str) -> str:
    """``pattern`` anchored at both ends of the whole value, for a JSON Schema ``pattern``.

    JSON Schema patterns are searched, not matched, so they need anchors; but Python's ``$``
    also matches before a trailing newline (``"BTC\\n"`` passed ``^[A-Z0-9]{2,10}$``), and ``\\Z``
    is Python's alone (ECMA 262, the dialect JSON Schema names, reads it as a literal ``Z``). A
    negative look-ahead for any character is the end of the value in both dialects.
    """
    return rf"^(?:{pattern})(?![\s\S])"


SYMBOL_PATTERN = whole("[A-Z0-9]{2,10}")
# Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
IMAGE_TAG_PATTERN = whole("[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# A moving tag: what a run ran could not be told afterwards, whatever the deployment's pattern.
MOVING_TAG = "latest"
DEFAULT_IMAGE_TAG = "0.1.0"
# Pod-side defaults of finetune.folds (DEFAULT_TRAIN_BARS / DEFAULT_TEST_BARS): hourly bars.
DEFAULT_TRAIN_BARS = 24 * 180
DEFAULT_TEST_BARS = 24 * 30


def _bps_list(default: list[int], title: str, description: str) -> dict[str, Any]:
    return {
        "default": default,
        "title": title,
        "description": description,
        "schema": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 1000},
            "minItems": 1,
            "maxItems": 10,
            "uniqueItems": True,
        },
        "allowed": "a non-empty list of distinct integers from 0 to 1000 (basis points)",
    }


def _integer(default: int, minimum: int, maximum: int, title: str, description: str) -> dict[str, Any]:
    return {
        "default": default,
        "title": title,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum, "maximum": maximum},
        "allowed": f"an integer from {minimum} to {maximum}",
    }


def _image_spec(tag_pattern: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "pattern": IMAGE_TAG_PATTERN, "not": {"const": MOVING_TAG}}
    allowed = "an image tag (letters, digits, _ . -; not latest)"
    if tag_pattern is not None:
        # the deployment's restriction (FINETUNE_IMAGE_TAG_PATTERN, default: the pinned tag's shape)
        schema["allOf"] = [{"pattern": whole(tag_pattern)}]
        allowed += f" matching the whole of {tag_pattern} (FINETUNE_IMAGE_TAG_PATTERN)"
    return {
        "default": DEFAULT_IMAGE_TAG,
        "title": "Image tag",
        "description": "Tag of the pinned finetune image (the repository is fixed by the deployment).",
        "schema": schema,
        "allowed": allowed,
    }


def _param_specs(
    known_factors: Sequence[str], *, known_models: Sequence[str] = (DEFAULT_MODEL,), tag_pattern: str | None = None
) -> dict[str, dict[str, Any]]:
    """Name -> default, title, description, JSON schema and an "allowed" text for error messages.

    The ``model`` default is ``ridge_long_flat`` when it is allowed, else the first known model.
    """
    factors = list(known_factors)
    models = list(known_models)
    return {
        "factors": {
            "default": factors,
            "title": "Factors",
            "description": "Feature families to fine-tune: one pod per factor, sized by the sizing map.",
            "schema": {
                "type": "array",
                "items": {"type": "string", "enum": factors},
                "minItems": 1,
                "uniqueItems": True,
            },
            # The trigger form renders a multi-select only with examples (its pick list).
            "form": {"examples": factors},
            "allowed": f"a non-empty list of distinct factors from: {', '.join(factors)}",
        },
        "model": {
            "default": DEFAULT_MODEL if DEFAULT_MODEL in models else models[0],
            "title": "Model",
            "description": "The model fine-tuned per factor, crypto and fold (FINETUNE_MODELS); every row's strategy.",
            "schema": {"type": "string", "enum": models},
            "form": {"examples": models},
            "allowed": f"one of the models: {', '.join(models)} (FINETUNE_MODELS)",
        },
        "cryptos": {
            "default": ["BTC", "ETH", "SOL"],
            "title": "Cryptos",
            "description": "Symbols, 2-10 upper-case letters or digits (one per line).",
            "schema": {
                "type": "array",
                "items": {"type": "string", "pattern": SYMBOL_PATTERN},
                "minItems": 1,
                "maxItems": 50,
                "uniqueItems": True,
            },
            "allowed": "a non-empty list of distinct symbols of 2 to 10 upper-case letters or digits",
        },
        "cost_bps": _bps_list([10, 15, 30], "Cost (bps)", "Trading cost levels per side, in basis points."),
        "slippage_bps": _bps_list([0], "Slippage (bps)", "Slippage levels per side, in basis points."),
        "n_folds": _integer(4, 1, 24, "Walk-forward folds", "Number of walk-forward folds (fold 0 is the oldest)."),
        "n_seeds": _integer(100, 1, 10_000, "Random-baseline seeds", "Seeds of the random baseline."),
        "n_shifts": _integer(
            DEFAULT_N_SHIFTS,
            1,
            100_000,
            "Timing and profit resamples",
            "Sign flips per model in the timing test and bootstrap resamples per cost in the profit test. "
            "A fold's p-value is never below 1/(n_shifts + 1): plan refuses a sweep too large for its floor.",
        ),
        "hold_bars": _integer(24, 1, 24 * 30, "Hold bars", "Holding period of the random baseline and label horizon."),
        "train_bars": _integer(DEFAULT_TRAIN_BARS, 48, 24 * 365 * 5, "Train bars", "Training window per fold (bars)."),
        "test_bars": _integer(DEFAULT_TEST_BARS, 24, 24 * 365, "Test bars", "Test window per fold (bars)."),
        "image": _image_spec(tag_pattern),
        "fdr_q": {
            "default": DEFAULT_FDR_Q,
            "title": "Findings FDR (q)",
            "description": "False discovery rate of the findings step (Benjamini-Hochberg over the run's groups).",
            "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "allowed": "a number strictly between 0 and 1, e.g. 0.1",
        },
    }


PARAM_NAMES: tuple[str, ...] = tuple(_param_specs(tuple(SIZING_MAP)))


class PlanError(ValueError):
    """Params or sizing overrides that cannot be planned; the message names the param."""


def default_params(*, image_tag: str | None = None) -> dict[str, Any]:
    """The default value of every param (a fresh copy).

    :param image_tag: the default image tag (default: :data:`DEFAULT_IMAGE_TAG`).
    """
    params = {name: copy.deepcopy(spec["default"]) for name, spec in _param_specs(tuple(SIZING_MAP)).items()}
    if image_tag:
        params["image"] = image_tag
    return params


def form_factors(sizing_json: str | None) -> tuple[str, ...]:
    """The factors the trigger form offers: the sizing map's, with ``FINETUNE_SIZING``'s additions.

    Read when the DAG is parsed (an environment variable, no I/O); a bad ``FINETUNE_SIZING`` offers
    the built-ins here and fails ``plan``, which reads it again at run time, naming the problem.
    """
    try:
        return tuple(load_sizing(sizing_json))
    except SizingError:
        return tuple(SIZING_MAP)


def build_params(
    *,
    image_tag: str | None = None,
    tag_pattern: str | None = None,
    known_factors: Sequence[str] | None = None,
    known_models: Sequence[str] = (DEFAULT_MODEL,),
) -> dict[str, Param]:
    """The DAG's ``Param`` objects (trigger form + trigger-time validation).

    :param image_tag: the default image tag, e.g. ``Settings.image_tag``.
    :param tag_pattern: the tags a trigger may run, ``Settings.image_tag_pattern`` (None: any tag
        but ``latest``).
    :param known_factors: the form's factors (default: the sizing map's built-ins).
    :param known_models: the form's models, ``Settings.models``.
    """
    from airflow.sdk import Param

    params = {}
    specs = _param_specs(tuple(known_factors or SIZING_MAP), known_models=known_models, tag_pattern=tag_pattern)
    for name, spec in specs.items():
        default = copy.deepcopy(spec["default"])
        if name == "image" and image_tag:
            default = image_tag
        params[name] = Param(
            default,
            description=spec["description"],
            title=spec["title"],
            **spec["schema"],
            **spec.get("form", {}),
        )
    return params


def validate_params(
    params: Mapping[str, Any],
    *,
    known_factors: Sequence[str] | None = None,
    known_models: Sequence[str] = (DEFAULT_MODEL,),
    tag_pattern: str | None = None,
) -> dict[str, Any]:
    """Validate run params at run time and return them normalised (defaults filled, ints as int).

    :param params: the run's params (declared params plus any conf keys).
    :param known_factors: factors that may be planned (default: the sizing map's).
    :param known_models: models that may be planned (``Settings.models``, ``FINETUNE_MODELS``).
    :param tag_pattern: the tags a run may use (see :func:`build_params`).
    :raises PlanError: naming the first bad param and what is allowed.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    specs = _param_specs(tuple(known_factors or SIZING_MAP), known_models=known_models, tag_pattern=tag_pattern)
    unknown = sorted(str(key) for key in params if key not in specs)
    if unknown:
        raise PlanError(f"unknown param(s) {', '.join(map(repr, unknown))}; allowed params: {', '.join(specs)}")
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        value = params[name] if name in params else copy.deepcopy(spec["default"])
        error = best_match(Draft202012Validator(spec["schema"]).iter_errors(value))
        if error is not None:
            where = "".join(f"[{p}]" for p in error.absolute_path)
            raise PlanError(f"param {name!r}{where}: {error.message}; allowed: {spec['allowed']}")
        # NaN passes every JSON Schema bound (each comparison with it is false).
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanError(f"param {name!r}: {value!r} is not a finite number; allowed: {spec['allowed']}")
        result[name] = _normalise(value)
    return result


def _normalise(value: Any) -> Any:
    # JSON Schema counts 10.0 as an integer; the pod's argument parser does not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value
