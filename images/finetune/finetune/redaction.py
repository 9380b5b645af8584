"""Secrets kept out of every line the pod writes: the DSN's password, scrubbed from messages.

libpq error messages may echo parts of the connection string, and a DSN named in a message (to
say which server was unreachable) must not carry its password; these helpers are the one place
that knows how a password hides in a URI or a ``key=value`` string.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict


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
