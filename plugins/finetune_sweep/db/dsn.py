"""The finetune database as a libpq URI, built from the Airflow connection (``finetune_db``).

The URI carries the password: callers pass it to psycopg and never log it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

# libpq keywords that may come from the connection's extra (anything else, e.g. Airflow's own
# cursor or IAM options, means nothing to libpq and is left out).
LIBPQ_EXTRA_KEYS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
)

# The password of any URI in a text (``scheme://user:PASSWORD@``) and of a libpq keyword string.
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def dsn_from_connection(conn_id: str = "finetune_db") -> str:
    """The libpq URI of an Airflow connection (e.g. ``AIRFLOW_CONN_FINETUNE_DB``).

    :param conn_id: the Airflow connection id.
    """
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return dsn_from_parts(
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        database=conn.schema,
        extra=conn.extra_dejson,
    )


def dsn_from_parts(
    *,
    host: str | None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    database: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Assemble a libpq URI; a host starting with ``/`` is a Unix socket directory.

    ``postgresql://user:pw@db.example:5432/name?sslmode=require`` or, for a socket,
    ``postgresql://user@/name?host=/tmp/x`` (libpq takes the socket directory as the ``host``
    query parameter; a port then names the socket file ``.s.PGSQL.<port>``).

    :param host: host name, IP address or socket directory (may also come as ``extra["host"]``).
    :param port: TCP port (or the socket's port number).
    :param login: user name.
    :param password: password, URL-quoted in the URI.
    :param database: database name (Airflow's ``schema`` field).
    :param extra: the connection's extra; libpq keywords in :data:`LIBPQ_EXTRA_KEYS` are kept.
    """
    extra = dict(extra or {})
    host = host or extra.get("host") or None
    query: dict[str, str] = {}
    userinfo = ""
    if login:
        userinfo = quote(login, safe="")
        if password:
            userinfo += ":" + quote(password, safe="")
        userinfo += "@"
    if host and host.startswith("/"):
        netloc = userinfo
        query["host"] = host
        if port:
            query["port"] = str(int(port))
    else:
        hostpart = f"[{host}]" if host and ":" in host else (host or "")
        netloc = userinfo + hostpart + (f":{int(port)}" if port else "")
    for key in LIBPQ_EXTRA_KEYS:
        if extra.get(key) not in (None, ""):
            query[key] = str(extra[key])
    path = "/" + quote(database, safe="") if database else "/"
    uri = f"postgresql://{netloc}{path}"
    if query:
        uri += "?" + urlencode(query, safe="/")
    return uri



def connection_json_from_dsn(dsn: str) -> str:
    """The Airflow JSON connection (``AIRFLOW_CONN_FINETUNE_DB``) of a libpq URI.

    The inverse of :func:`dsn_from_parts`: a socket directory given as ``?host=/dir`` becomes the
    connection's host, libpq options in :data:`LIBPQ_EXTRA_KEYS` go to its extra.

    :param dsn: ``postgresql://user:pw@host:port/db?sslmode=...`` (or ``postgres://``).
    """
    import json
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("not a postgresql:// URI")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or parts.hostname
    port = query.pop("port", None) or parts.port
    conn: dict[str, Any] = {"conn_type": "postgres"}
    if host:
        conn["host"] = host
    if port:
        conn["port"] = int(port)
    if parts.username:
        conn["login"] = unquote(parts.username)
    if parts.password:
        conn["password"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        conn["schema"] = database
    extra = {key: value for key, value in query.items() if key in LIBPQ_EXTRA_KEYS}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Hide secret values and DSN passwords in ``text`` (a log line, a message, a DSN).

    :param text: the text to print or log.
    :param secrets: literal values to replace with ``***`` (e.g. a resolved DSN, or its password
        alone, which leaks as easily in a libpq error message).
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URI_PASSWORD.sub(r"\g<head>***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (URI or ``key=value`` form), safe to print.

    :param dsn: a libpq URI or connection string.
    """
    return redact(dsn)


# --------------------------------------------------------------------------- attempt records
# The Airflow side records pod attempts with psycopg alone: a worker image needs the providers and
# psycopg, never the pod package (numpy, pandas) that writes the pod's own rows.

# Bounds for the worker's own writes: a locked manifest row or a stuck server must not hold the
# task (and its classification) for longer than this.
RECORD_CONNECT_TIMEOUT_SECONDS = 10
RECORD_STATEMENT_TIMEOUT_MS = 30_000

# The pod's own record of the same attempt wins (more precise), except against an OOM kill.
UPSERT_FAILED_FACTOR_SQL = """
INSERT INTO finetune_run_factors AS f
    (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes, exit_reason, attempt, updated_at)
VALUES (%(run_id)s, %(factor)s, %(profile)s, 'failed', %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(attempt)s, now())
ON CONFLICT (run_id, factor) DO UPDATE SET
    status = 'failed',
    profile = EXCLUDED.profile,
    memory_limit_bytes = EXCLUDED.memory_limit_bytes,
    exit_reason = CASE
        WHEN f.attempt = EXCLUDED.attempt AND f.exit_reason IS NOT NULL
             AND EXCLUDED.exit_reason <> %(oom_reason)s THEN f.exit_reason
        ELSE EXCLUDED.exit_reason END,
    peak_memory_bytes = CASE
        WHEN f.attempt = EXCLUDED.attempt THEN GREATEST(f.peak_memory_bytes, EXCLUDED.peak_memory_bytes)
        ELSE EXCLUDED.peak_memory_bytes END,
    attempt = EXCLUDED.attempt,
    updated_at = now()
"""

UPSERT_ATTEMPT_SQL = """
INSERT INTO finetune_pod_attempts AS a
    (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
     duration_seconds, finished_at)
VALUES (%(run_id)s, %(factor)s, %(airflow_run_id)s, %(attempt)s, %(profile)s, %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(duration_seconds)s, now())
ON CONFLICT (run_id, factor, airflow_run_id, attempt) DO UPDATE SET
    exit_reason = CASE WHEN EXCLUDED.exit_reason = %(oom_reason)s THEN EXCLUDED.exit_reason ELSE a.exit_reason END,
    peak_memory_bytes = GREATEST(a.peak_memory_bytes, EXCLUDED.peak_memory_bytes),
    memory_limit_bytes = COALESCE(a.memory_limit_bytes, EXCLUDED.memory_limit_bytes),
    duration_seconds = COALESCE(a.duration_seconds, EXCLUDED.duration_seconds)
"""

# A retried attempt (disruption, kill) leaves the factor to its next try: the manifest is not
# marked failed, only told why the attempt ended (a factor already done keeps its record).
NOTE_INTERRUPTED_FACTOR_SQL = """
UPDATE finetune_run_factors
SET exit_reason = %(exit_reason)s, attempt = %(attempt)s, updated_at = now()
WHERE run_id = %(run_id)s AND factor = %(factor)s AND status <> 'done'
"""

_ATTEMPT_FIELDS = (
    "run_id",
    "factor",
    "airflow_run_id",
    "attempt",
    "profile",
    "memory_limit_bytes",
    "peak_memory_bytes",
    "exit_reason",
    "duration_seconds",
)


def record_attempt(dsn: str, attempt: Mapping[str, Any], *, factor_failed: bool) -> None:
    """Record one ended pod attempt: its ``finetune_pod_attempts`` row and the manifest.

    One transaction. ``factor_failed`` marks the manifest ``failed`` (an OOM or a fail-fast
    error); otherwise (a disrupted or killed attempt) only its exit reason and attempt are noted.

    :param dsn: the libpq URI (never logged).
    :param attempt: the fields of :data:`_ATTEMPT_FIELDS`.
    :param factor_failed: whether this attempt failed the factor (for now).
    :raises psycopg.Error: the database refused or could not be reached (the caller logs it).
    """
    import psycopg

    from finetune_sweep.sizing.profiles import OOM_REASON

    missing = [name for name in _ATTEMPT_FIELDS if name not in attempt]
    if missing:
        raise ValueError(f"attempt record lacks {', '.join(missing)}")
    row = {**{name: attempt[name] for name in _ATTEMPT_FIELDS}, "oom_reason": OOM_REASON}
    with psycopg.connect(
        dsn,
        connect_timeout=RECORD_CONNECT_TIMEOUT_SECONDS,
        options=f"-c statement_timeout={RECORD_STATEMENT_TIMEOUT_MS} -c lock_timeout={RECORD_STATEMENT_TIMEOUT_MS}",
    ) as conn, conn.transaction():
        conn.execute(UPSERT_FAILED_FACTOR_SQL if factor_failed else NOTE_INTERRUPTED_FACTOR_SQL, row)
        conn.execute(UPSERT_ATTEMPT_SQL, row)


COUNT_ROUND_ATTEMPTS_SQL = """
SELECT count(*) FILTER (WHERE exit_reason = %(oom_reason)s),
       count(*) FILTER (WHERE exit_reason LIKE 'Disrupted:%%')
FROM finetune_pod_attempts
WHERE run_id = %(run_id)s AND factor = %(factor)s AND airflow_run_id = %(airflow_run_id)s
  AND attempt >= %(since_attempt)s
"""


def count_round_attempts(
    dsn: str, *, run_id: str, factor: str, airflow_run_id: str, since_attempt: int
) -> tuple[int, int]:
    """OOMs and disruptions recorded for a factor's tries since ``since_attempt`` (one round).

    The operator's fallback when no task state store is available: the same classified events,
    read back from the attempt history.

    :param dsn: the libpq URI.
    :param run_id: the finetune run id.
    :param factor: the factor.
    :param airflow_run_id: the Airflow run of the tries.
    :param since_attempt: the first try number of the round.
    """
    import psycopg

    from finetune_sweep.sizing.profiles import OOM_REASON

    params = {
        "run_id": run_id,
        "factor": factor,
        "airflow_run_id": airflow_run_id,
        "since_attempt": since_attempt,
        "oom_reason": OOM_REASON,
    }
    with psycopg.connect(dsn, connect_timeout=RECORD_CONNECT_TIMEOUT_SECONDS) as conn:
        ooms, disruptions = conn.execute(COUNT_ROUND_ATTEMPTS_SQL, params).fetchone()
    return int(ooms), int(disruptions)
