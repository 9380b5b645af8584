"""Settings of the Airflow side, read from the environment once, with defaults.

Everything here is cheap and offline, so the DAG file may read it at parse time. The sizing
overrides (``FINETUNE_PROFILES`` / ``FINETUNE_SIZING``) are deliberately *not* cached: ``plan``
reads them at run time through :func:`sizing_overrides`, so a change takes effect on the next run
without a DAG re-parse and a bad override fails a run, never the DAG import.

Environment:

``FINETUNE_POD_BACKEND``      ``kubernetes`` (default) or ``local`` (section 7 of the design)
``FINETUNE_NAMESPACE``        namespace of the pods (default ``finetune``)
``FINETUNE_IMAGE``            the image, ``repository[:tag]`` (default below); the DAG param
                              ``image`` gives the tag of each run (its default: this tag, else
                              ``0.1.0``), so every pod runs a pinned tag, never ``latest``
``FINETUNE_IMAGE_TAG_PATTERN``  optional regular expression (whole tag) of the tags a trigger may
                              run; default: the pinned tag's release pattern (``0.1.0`` gives
                              ``[0-9]+\\.[0-9]+\\.[0-9]+``); ``latest`` is refused whatever it says
``FINETUNE_DB_SECRET``        Kubernetes Secret holding the libpq URI (default ``finetune-db``)
``FINETUNE_DB_SECRET_KEY``    key inside that Secret (default ``dsn``)
``FINETUNE_CONN_ID``          Airflow connection of the gate and the local backend (``finetune_db``)
``FINETUNE_SERVICE_ACCOUNT``  service account of the pods (default: the namespace default)
``FINETUNE_DATA_URI``         optional ``--data-uri`` passed to every ``run`` pod
``FINETUNE_RETRY_DELAY_SECONDS``  delay before an OOM retry of ``run_factor`` (default 10)
``FINETUNE_POD_TEMPLATE_FILE``    optional pod template (YAML) for what the cluster needs beyond
                              the spec built here (tolerations, imagePullSecrets, priority class);
                              an allow-list: any other field is refused (``pods.template``)
``FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS``, ``FINETUNE_DB_LOCK_TIMEOUT_SECONDS``,
``FINETUNE_DB_RETRY_SECONDS``, ``FINETUNE_DB_CONNECT_TIMEOUT_SECONDS``
                              when set here, passed to every pod's env (the pod validates them:
                              exit 2 naming a bad one); unset, the pod's defaults apply. The
                              statement, lock and connect timeouts (defaults 60, 45 and 10 s, the
                              pod's) also bound every Airflow-side connection: the tasks, the CLI
                              and the UI (:class:`DatabaseBounds`, ``db.connect``)
``FINETUNE_SCHEDULE_TIMEOUT_SECONDS``  how long a pod may wait to be scheduled (default 900: a
                              high-memory node may have to be scaled up first)
``FINETUNE_STARTUP_TIMEOUT_SECONDS``   how long a scheduled pod may take to start (default 180:
                              image pull)
``FINETUNE_CONFIG_ERROR_GRACE_SECONDS``  how long a container may stay ``CreateContainerConfigError``
                              (a missing DSN Secret or key) before the task fails naming it
                              (default 30; the kubelet retries, so a Secret created meanwhile
                              still works; deferrable tasks: their trigger watches the same)
``FINETUNE_KEEP_FAILED_PODS``  ``true`` keeps failed factor pods for debugging (default: they are
                              deleted once their logs and status were read)
``FINETUNE_DISRUPTION_RETRIES``  retries on the same profile of a pod the cluster disrupted
                              (eviction, preemption, node shutdown; default 2)

Sizing policy (read at run time by ``plan``, which refuses a bad value, and by ``register``, which
applies it; see :func:`sizing_policy`):

``FINETUNE_SIZING_MODE``            ``history`` (default): each factor starts on the larger of its
                                    map profile and what its recorded attempts ask for; ``static``:
                                    the map alone
``FINETUNE_SIZING_HISTORY_RUNS``    the history is a factor's attempts in its last N finetune runs
                                    (default 8) ...
``FINETUNE_SIZING_HISTORY_DAYS``    ... that finished within the last N days (default 90)
``FINETUNE_POD_DEADLINE_SECONDS``  the ``activeDeadlineSeconds`` of every ``run_factor`` pod, fixed;
                              unset: sized from the pod's keys (below)
``FINETUNE_POD_DEADLINE_PER_KEY_SECONDS``  allowance per key (crypto x fold x cost basis) of a
                              pod (default 60)
``FINETUNE_POD_DEADLINE_STARTUP_SECONDS``  allowance for loading data and connecting (default 600)
``FINETUNE_POD_DEADLINE_MAX_SECONDS``  the ceiling of that deadline, sized or fixed (default 86400:
                              one trigger must not hold a node for weeks)
``FINETUNE_MODELS``           the models a run may choose (DAG param ``model``), comma-separated
                              names that the pod image registers under ``finetune.models``
                              (default ``ridge_long_flat``; the first is the param's default when
                              ``ridge_long_flat`` is not listed); the pod checks again what it has
``FINETUNE_MAX_RUN_WORK``     the largest run ``plan`` admits, in units of keys x (n_seeds +
                              n_shifts) over all factors (default 100,000,000: about 1.5 times the
                              README's production example of 60,000 keys at 100 seeds and
                              the default 999 shifts)
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/finetune-sweep/finetune:0.1.0"
# The README's production example (4 factors x 50 cryptos x 15 folds x 10 costs x 2 slippages =
# 60,000 keys, 100 seeds and 100 shifts: 12,000,000) four times over; the abuse it stops (a run
# holding the cluster for weeks) is two orders larger.
DEFAULT_MAX_RUN_WORK = 100_000_000
BACKENDS = ("kubernetes", "local")
# The pod's built-in model (finetune.plugins.DEFAULT_MODEL), the default of FINETUNE_MODELS.
DEFAULT_MODEL = "ridge_long_flat"
# A plug-in name as the Airflow side accepts it (a factor in FINETUNE_SIZING, a model in
# FINETUNE_MODELS): an entry point name that is also safe in a pod argument and a label value.
PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# The pod's database bounds (finetune.connection): set on the Airflow side, they reach every pod.
POD_DATABASE_ENV = (
    "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS",
    "FINETUNE_DB_LOCK_TIMEOUT_SECONDS",
    "FINETUNE_DB_RETRY_SECONDS",
    "FINETUNE_DB_CONNECT_TIMEOUT_SECONDS",
)


class SettingsError(ValueError):
    """A setting has a value the project cannot use; the message names the variable."""


@dataclass(frozen=True)
class DatabaseBounds:
    """The bounds of every Airflow-side connection to the finetune database (``db.connect``).

    The pod's defaults and variables, so that one setting bounds both sides. The lock timeout
    stays below the statement timeout: PostgreSQL counts a lock wait in the statement's time, and
    a lock held by someone else is worth naming as such.

    :param connect_timeout_seconds: reaching the server (libpq's ``connect_timeout``; > 0).
    :param statement_timeout_seconds: ``statement_timeout`` of the session (0: off).
    :param lock_timeout_seconds: ``lock_timeout`` of the session (0: off).
    """

    connect_timeout_seconds: float = 10.0
    statement_timeout_seconds: float = 60.0
    lock_timeout_seconds: float = 45.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DatabaseBounds:
        """The bounds from ``FINETUNE_DB_*_TIMEOUT_SECONDS`` in ``env``, checked as the pod checks them.

        The check repeats ``finetune.connection``'s on purpose: a worker image need not hold the
        pod package.
        """

        def seconds(name: str, default: float, *, positive: bool = False) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                allowed = "a number of seconds > 0" if positive else "a number of seconds >= 0 (0 turns it off)"
                raise SettingsError(f"{name}={text!r} must be {allowed}")
            return value

        return cls(
            connect_timeout_seconds=seconds(
                "FINETUNE_DB_CONNECT_TIMEOUT_SECONDS", cls.connect_timeout_seconds, positive=True
            ),
            statement_timeout_seconds=seconds("FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS", cls.statement_timeout_seconds),
            lock_timeout_seconds=seconds("FINETUNE_DB_LOCK_TIMEOUT_SECONDS", cls.lock_timeout_seconds),
        )


@dataclass(frozen=True)
class Settings:
    """The deployment settings of the Airflow side (see the module docstring for the variables)."""

    pod_backend: str = "kubernetes"
    namespace: str = "finetune"
    image: str = DEFAULT_IMAGE
    db_secret_name: str = "finetune-db"
    db_secret_key: str = "dsn"
    conn_id: str = "finetune_db"
    service_account: str | None = None
    data_uri: str | None = None
    retry_delay_seconds: float = 10.0
    pod_template_file: str | None = None
    # (name, value) of the POD_DATABASE_ENV variables that are set.
    pod_database_env: tuple[tuple[str, str], ...] = ()
    schedule_timeout_seconds: int = 900
    startup_timeout_seconds: int = 180
    config_error_grace_seconds: int = 30
    keep_failed_pods: bool = False
    disruption_retries: int = 2
    pod_deadline_seconds: int | None = None
    pod_deadline_per_key_seconds: int = 60
    pod_deadline_startup_seconds: int = 600
    pod_deadline_max_seconds: int = 86400
    max_run_work: int = DEFAULT_MAX_RUN_WORK
    # FINETUNE_IMAGE_TAG_PATTERN as set (None: the pinned tag's release pattern)
    tag_pattern: str | None = None
    database: DatabaseBounds = DatabaseBounds()
    # FINETUNE_MODELS: the models a run may choose (the pod image registers them)
    models: tuple[str, ...] = (DEFAULT_MODEL,)

    @property
    def default_model(self) -> str:
        """The DAG param ``model``'s default: ``ridge_long_flat`` when allowed, else the first model."""
        return DEFAULT_MODEL if DEFAULT_MODEL in self.models else self.models[0]

    @property
    def image_repository(self) -> str:
        """The image without its tag (a registry port such as ``host:5000/x`` is kept)."""
        return split_image(self.image)[0]

    @property
    def image_tag(self) -> str:
        """The tag of the pinned image (the default of the DAG param ``image``)."""
        return split_image(self.image)[1]

    @property
    def image_tag_pattern(self) -> str:
        """The tags a trigger may run: ``FINETUNE_IMAGE_TAG_PATTERN``, else the pinned tag's shape."""
        return self.tag_pattern or release_pattern(self.image_tag)

    def image_with_tag(self, tag: str) -> str:
        """The pinned repository with another tag.

        :param tag: the tag (already validated by the DAG param schema).
        """
        return f"{self.image_repository}:{tag}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``).

        :param environ: the environment to read; tests pass a dict.
        """
        env = os.environ if environ is None else environ

        def get(name: str, default: str | None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        backend = (get("FINETUNE_POD_BACKEND", "kubernetes") or "kubernetes").lower()
        if backend not in BACKENDS:
            raise SettingsError(f"FINETUNE_POD_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
        image = get("FINETUNE_IMAGE", DEFAULT_IMAGE) or DEFAULT_IMAGE
        split_image(image)  # refuse a malformed image early, with the variable named
        delay_text = get("FINETUNE_RETRY_DELAY_SECONDS", None)
        try:
            retry_delay = float(delay_text) if delay_text is not None else cls.retry_delay_seconds
        except ValueError:
            retry_delay = -1.0
        if not 0 <= retry_delay <= 3600:
            raise SettingsError(f"FINETUNE_RETRY_DELAY_SECONDS={delay_text!r} must be seconds from 0 to 3600")

        def integer(name: str, default: int, low: int, high: int) -> int:
            text = get(name, None)
            if text is None:
                return default
            if not text.isdigit() or not low <= int(text) <= high:
                raise SettingsError(f"{name}={text!r} must be an integer from {low} to {high}")
            return int(text)

        deadline_max = integer("FINETUNE_POD_DEADLINE_MAX_SECONDS", cls.pod_deadline_max_seconds, 60, 30 * 86400)
        # 0 (unset; a set value is at least 1): the deadline is sized from the pod's keys
        fixed_deadline = integer("FINETUNE_POD_DEADLINE_SECONDS", 0, 1, 30 * 86400) or None
        if fixed_deadline is not None and fixed_deadline > deadline_max:
            raise SettingsError(
                f"FINETUNE_POD_DEADLINE_SECONDS={fixed_deadline} is above "
                f"FINETUNE_POD_DEADLINE_MAX_SECONDS={deadline_max}; lower it or raise the ceiling"
            )
        tag_pattern = get("FINETUNE_IMAGE_TAG_PATTERN", None)
        if tag_pattern is not None:
            try:
                re.compile(tag_pattern)
            except re.error as err:
                raise SettingsError(
                    f"FINETUNE_IMAGE_TAG_PATTERN={tag_pattern!r} is not a regular expression ({err})"
                ) from None
        keep_text = (get("FINETUNE_KEEP_FAILED_PODS", "false") or "false").lower()
        if keep_text not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"FINETUNE_KEEP_FAILED_PODS={keep_text!r} must be true or false")
        return cls(
            pod_backend=backend,
            namespace=get("FINETUNE_NAMESPACE", cls.namespace) or cls.namespace,
            image=image,
            db_secret_name=get("FINETUNE_DB_SECRET", cls.db_secret_name) or cls.db_secret_name,
            db_secret_key=get("FINETUNE_DB_SECRET_KEY", cls.db_secret_key) or cls.db_secret_key,
            conn_id=get("FINETUNE_CONN_ID", cls.conn_id) or cls.conn_id,
            service_account=get("FINETUNE_SERVICE_ACCOUNT", None),
            data_uri=get("FINETUNE_DATA_URI", None),
            retry_delay_seconds=retry_delay,
            pod_template_file=get("FINETUNE_POD_TEMPLATE_FILE", None),
            pod_database_env=tuple((name, value) for name in POD_DATABASE_ENV if (value := get(name, None))),
            schedule_timeout_seconds=integer(
                "FINETUNE_SCHEDULE_TIMEOUT_SECONDS", cls.schedule_timeout_seconds, 1, 86400
            ),
            startup_timeout_seconds=integer("FINETUNE_STARTUP_TIMEOUT_SECONDS", cls.startup_timeout_seconds, 1, 86400),
            config_error_grace_seconds=integer(
                "FINETUNE_CONFIG_ERROR_GRACE_SECONDS", cls.config_error_grace_seconds, 0, 86400
            ),
            keep_failed_pods=keep_text in ("true", "1", "yes"),
            disruption_retries=integer("FINETUNE_DISRUPTION_RETRIES", cls.disruption_retries, 0, 10),
            pod_deadline_seconds=fixed_deadline,
            pod_deadline_per_key_seconds=integer(
                "FINETUNE_POD_DEADLINE_PER_KEY_SECONDS", cls.pod_deadline_per_key_seconds, 1, 86400
            ),
            pod_deadline_startup_seconds=integer(
                "FINETUNE_POD_DEADLINE_STARTUP_SECONDS", cls.pod_deadline_startup_seconds, 1, 86400
            ),
            pod_deadline_max_seconds=deadline_max,
            max_run_work=integer("FINETUNE_MAX_RUN_WORK", cls.max_run_work, 1, 10**12),
            tag_pattern=tag_pattern,
            database=DatabaseBounds.from_env(env),
            models=parse_models(get("FINETUNE_MODELS", DEFAULT_MODEL) or DEFAULT_MODEL),
        )


def parse_models(text: str) -> tuple[str, ...]:
    """``FINETUNE_MODELS``: comma-separated model names, duplicates dropped.

    :raises SettingsError: an empty list or a name that is not ``[a-z][a-z0-9_]*`` (<= 63 chars).
    """
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [name for name in names if not PLUGIN_NAME.match(name)]
    if bad or not names:
        raise SettingsError(
            f"FINETUNE_MODELS={text!r} must be comma-separated model names of lower-case letters, digits "
            f"and _ (starting with a letter), e.g. {DEFAULT_MODEL},my_model"
        )
    return names


def split_image(image: str) -> tuple[str, str]:
    """Split ``repository[:tag]``; without a tag, the tag is the default one (``0.1.0``).

    :param image: e.g. ``ghcr.io/finetune-sweep/finetune:0.1.0`` or ``registry:5000/finetune``.
    :raises SettingsError: a digest (the DAG param chooses tags) or an empty repository.
    """
    if "@" in image or not image.strip(":"):
        raise SettingsError(f"FINETUNE_IMAGE={image!r} must be repository[:tag] (no digest)")
    repository, sep, tag = image.rpartition(":")
    # A colon inside the registry host (``host:5000/x``) is followed by a slash: not a tag.
    if not sep or "/" in tag:
        return image, DEFAULT_IMAGE.rpartition(":")[2]
    if not repository or not tag:
        raise SettingsError(f"FINETUNE_IMAGE={image!r} must be repository[:tag]")
    return repository, tag


def release_pattern(tag: str) -> str:
    """The release pattern of a tag: its digit runs as ``[0-9]+``, the rest literal.

    ``0.1.0`` gives ``[0-9]+\\.[0-9]+\\.[0-9]+`` (the next releases, not ``dev`` or a branch
    tag); ``v2.3-rc1`` gives ``v[0-9]+\\.[0-9]+-rc[0-9]+``. A tag holds only ``[A-Za-z0-9_.-]``,
    of which only ``.`` means something in a pattern.

    :param tag: the pinned tag.
    """
    return re.sub("[0-9]+", "[0-9]+", tag).replace(".", "\\.")


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once (``get_settings.cache_clear()`` in tests)."""
    return Settings.from_env()


SIZING_MODES = ("history", "static")


@dataclass(frozen=True)
class SizingPolicy:
    """How ``register`` chooses each factor's starting profile (design 4.5 and 6).

    :param mode: ``history`` (the map, raised by the recorded history) or ``static`` (the map).
    :param history_runs: a factor's history is its attempts in its last ``history_runs`` finetune
        runs (reruns of one finetune run by several Airflow runs count as one run) ...
    :param history_days: ... that finished within the last ``history_days`` days. Both bounds
        apply, so a factor that got lighter stops being held up after 8 lighter runs or 90 days.
    """

    mode: str = "history"
    history_runs: int = 8
    history_days: int = 90


def _bounded_int(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise SettingsError(f"{name}={text!r} must be an integer from 1 to {maximum}")
    return value


def sizing_policy(environ: Mapping[str, str] | None = None) -> SizingPolicy:
    """The sizing policy from ``FINETUNE_SIZING_MODE`` / ``_HISTORY_RUNS`` / ``_HISTORY_DAYS``, read now.

    Not cached, like :func:`sizing_overrides`: a change applies to the next run without a re-parse.

    :param environ: the environment to read (default: ``os.environ``).
    :raises SettingsError: a value that is not allowed (the message names the variable).
    """
    env = os.environ if environ is None else environ
    mode = env.get("FINETUNE_SIZING_MODE", "").strip().lower() or SizingPolicy.mode
    if mode not in SIZING_MODES:
        raise SettingsError(
            f"FINETUNE_SIZING_MODE={env['FINETUNE_SIZING_MODE']!r} is not one of {', '.join(SIZING_MODES)}"
        )
    return SizingPolicy(
        mode=mode,
        history_runs=_bounded_int(env, "FINETUNE_SIZING_HISTORY_RUNS", SizingPolicy.history_runs, 1000),
        history_days=_bounded_int(env, "FINETUNE_SIZING_HISTORY_DAYS", SizingPolicy.history_days, 3650),
    )


def sizing_overrides(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The raw ``FINETUNE_PROFILES`` and ``FINETUNE_SIZING`` JSON, read now (never cached).

    :param environ: the environment to read (default: ``os.environ``).
    """
    env = os.environ if environ is None else environ
    return env.get("FINETUNE_PROFILES") or None, env.get("FINETUNE_SIZING") or None


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``FINETUNE_DB_URL`` (the pods' DSN), read now: the CLI's database when ``--dsn`` is not given.

    :param environ: the environment to read (default: ``os.environ``).
    """
    env = os.environ if environ is None else environ
    return env.get("FINETUNE_DB_URL", "").strip() or None
