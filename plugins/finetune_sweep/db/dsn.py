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
