"""Flyway-style migrations: ``V<digits>__<name>.sql`` applied once each, in order, checksum-verified.

Everything is validated before anything is applied: a misnamed file, a gap in the versions, a
changed or vanished applied file stop the run with one line naming the file and change nothing.
Each migration runs in its own transaction together with its ``schema_migrations`` row, so a
failing file leaves the database at the previous version. A session-level advisory lock on a fixed
key makes concurrent ``migrate`` processes (one per DAG run) take turns: the second one finds the
work done and applies nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from finetune.connection import DatabaseSettings, connect
from finetune.redaction import error_line

# "finetune" in ASCII: a fixed key that no other application on the server is likely to pick.
ADVISORY_LOCK_KEY = 0x66696E6574756E65

MIGRATION_FILE = re.compile(r"^V(?P<version>\d+)__(?P<name>[A-Za-z0-9_]+)\.sql$")

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration run refused or failed; the message is one line naming the file."""


@dataclass(frozen=True)
class Migration:
    version: str  # the digits as written in the file name, e.g. "001"
    name: str
    path: Path
    checksum: str
    sql: str

    @property
    def number(self) -> int:
        return int(self.version)


def checksum(data: bytes) -> str:
    """sha256 of the file with CRLF normalised to LF, so a Windows checkout verifies the same."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def default_migrations_dir() -> Path:
    """``FINETUNE_MIGRATIONS_DIR``, else the checkout's ``sql/``, else the image's ``/app/sql``."""
    configured = os.environ.get("FINETUNE_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    # A checkout: images/finetune/finetune/migrate.py, with sql/ at the repository root. In the
    # image the package sits at /app/finetune, which has fewer parents.
    parents = Path(__file__).resolve().parents
    if len(parents) > 3 and (parents[3] / "sql").is_dir():
        return parents[3] / "sql"
    return Path("/app/sql")


def load_migrations(migrations_dir: Path) -> list[Migration]:
    """Every migration of the directory, in order; refuses misnamed files and version gaps.

    Hidden files (``.gitkeep``) are ignored; any other file must be a well-named migration, so a
    typo such as ``V2_foo.sql`` or ``v003__x.sql`` cannot be skipped silently.
    """
    if not migrations_dir.is_dir():
        raise MigrationError(f"migrations directory not found: {migrations_dir}")
    by_number: dict[int, Migration] = {}
    for path in sorted(migrations_dir.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = MIGRATION_FILE.match(path.name)
        if match is None:
            raise MigrationError(
                f"misnamed migration file {path.name}: expected V<digits>__<name>.sql "
                f"(name of letters, digits and underscores) in {migrations_dir}"
            )
        data = path.read_bytes()
        migration = Migration(
            version=match["version"],
            name=match["name"],
            path=path,
            checksum=checksum(data),
            sql=data.decode("utf-8"),
        )
        if migration.number in by_number:
            raise MigrationError(
                f"duplicate migration version {migration.number}: {path.name} and "
                f"{by_number[migration.number].path.name}"
            )
        by_number[migration.number] = migration
    ordered = [by_number[number] for number in sorted(by_number)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.number != expected:
            raise MigrationError(
                f"version gap: {migration.path.name} is version {migration.number} but version "
                f"{expected} is missing in {migrations_dir}"
            )
    return ordered


def _applied(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """version -> (name, checksum) of the applied migrations; empty on a fresh database."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, digest) for version, name, digest in rows}


def _verify_applied(migrations: list[Migration], applied: dict[str, tuple[str, str]]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, (name, digest) in sorted(applied.items(), key=lambda item: int(item[0])):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"applied migration V{version}__{name}.sql is missing from the directory")
        if migration.name != name:
            raise MigrationError(f"applied migration V{version}__{name}.sql was renamed to {migration.path.name}")
        if migration.checksum != digest:
            raise MigrationError(
                f"checksum mismatch for applied migration {migration.path.name}: the file changed "
                f"after it was applied (roll forward with a new version instead)"
            )


def _target_number(target: str | None, migrations: list[Migration]) -> int:
    if target is None:
        return migrations[-1].number if migrations else 0
    digits = target[1:] if target[:1] in ("V", "v") else target
    if not digits.isdigit() or int(digits) not in {m.number for m in migrations}:
        raise MigrationError(f"unknown target version {target!r}")
    return int(digits)


def apply_migrations(
    dsn: str,
    migrations_dir: Path | str | None = None,
    *,
    target: str | None = None,
    settings: DatabaseSettings | None = None,
) -> list[str]:
    """Apply the pending migrations (up to ``target`` inclusive); returns the versions applied.

    :param dsn: libpq URI of the database.
    :param migrations_dir: directory of ``V*__*.sql``; default :func:`default_migrations_dir`.
    :param target: stop after this version (``"1"``, ``"001"`` or ``"V001"``).
    :param settings: timeouts and retry budget of the connection (default: the environment).
    :raises MigrationError: on any refusal or failure, with one line naming the file.
    """
    directory = Path(migrations_dir) if migrations_dir is not None else default_migrations_dir()
    # The files are checked before the database is touched: a bad directory changes nothing.
    migrations = load_migrations(directory)
    stop_at = _target_number(target, migrations)
    applied_now: list[str] = []
    with connect(dsn, autocommit=True, settings=settings) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            applied = _applied(conn)
            _verify_applied(migrations, applied)
            pending = [m for m in migrations if m.version not in applied and m.number <= stop_at]
            if pending:
                conn.execute(_CREATE_HISTORY)
            for migration in pending:
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode("utf-8"))
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.path.name} failed: {error_line(exc, dsn)}") from exc
                applied_now.append(migration.version)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now
