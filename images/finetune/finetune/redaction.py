"""Secrets kept out of every line the pod writes: the DSN's password, scrubbed from messages.

The same goes for the cloud credentials a ``s3://`` / ``gs://`` data URI is read with: an object
store's error could echo them, so :func:`scrub_environment` removes their values.

libpq error messages may echo parts of the connection string, and a DSN named in a message (to
say which server was unreachable) must not carry its password; these helpers are the one place
that knows how a password hides in a URI or a ``key=value`` string.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

# Environment variables whose values are secrets of the data stores (the access key id is not).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")


def dsn_password(dsn: str) -> str | None:
    """The password held by a libpq URI or key=value string, if any."""
    try:
        return conninfo_to_dict(dsn).get("password") or None
    except psycopg.ProgrammingError:
        # An unparsable DSN: fall back to the URI form, which is what the pods receive.
        return urlsplit(dsn).password


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for messages that must name the target)."""
    return scrub(dsn, dsn)


def scrub(text: str, dsn: str) -> str:
    """``text`` with any occurrence of the DSN's password replaced by ``***``."""
    password = dsn_password(dsn)
    if password:
        text = text.replace(password, "***")
    parts = urlsplit(text) if text.startswith(("postgres://", "postgresql://")) else None
    if parts is not None and parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        text = urlunsplit(parts._replace(netloc=netloc))
    return text


def error_line(exc: BaseException, dsn: str | None = None) -> str:
    """The error as one line (libpq messages span several), with the DSN's password scrubbed."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return scrub(text, dsn) if dsn else text


def scrub_environment(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with the values of :data:`SECRET_ENV` (from ``environ``, default the process's)
    replaced by ``***``; values shorter than 4 characters are left alone (they would mangle text)."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        secret = env.get(name, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
