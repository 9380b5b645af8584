"""finetune.migrate on real PostgreSQL: order, idempotence, checksums and every stop case."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from finetune import migrate
from finetune.migrate import MigrationError, apply_migrations, checksum, default_migrations_dir

REPO_SQL = Path(__file__).resolve().parents[3] / "sql"
# (version, name) of every migration shipped in sql/, in order: the expected history of a full apply.
REPO_MIGRATIONS = sorted(tuple(p.stem[1:].split("__", 1)) for p in REPO_SQL.glob("V*__*.sql"))
REPO_VERSIONS = [version for version, _ in REPO_MIGRATIONS]


def _history(dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:
            return []
        return conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def _make_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "sql"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _copy_repo_sql(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    shutil.copytree(REPO_SQL, directory)
    return directory


def test_applies_in_order_then_nothing(empty_db: str) -> None:
    assert apply_migrations(empty_db, REPO_SQL) == REPO_VERSIONS
    history = _history(empty_db)
    assert [(v, n) for v, n, _ in history] == REPO_MIGRATIONS
    assert REPO_MIGRATIONS[:3] == [("001", "create_core_tables"), ("002", "add_slippage_bps"), ("003", "pod_attempts")]
    assert all(digest == checksum((REPO_SQL / f"V{v}__{n}.sql").read_bytes()) for v, n, digest in history)
    assert apply_migrations(empty_db, REPO_SQL) == []
    assert _history(empty_db) == history


def test_checksum_ignores_line_endings() -> None:
    assert checksum(b"SELECT 1;\r\nSELECT 2;\r\n") == checksum(b"SELECT 1;\nSELECT 2;\n")
    assert checksum(b"SELECT 1;\n") != checksum(b"SELECT 2;\n")


def test_crlf_checkout_of_an_applied_file_is_not_a_change(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_repo_sql(tmp_path)
    apply_migrations(empty_db, directory)
    first = directory / "V001__create_core_tables.sql"
    first.write_bytes(first.read_bytes().replace(b"\n", b"\r\n"))
    assert apply_migrations(empty_db, directory) == []


def test_target_stops_at_a_version(empty_db: str) -> None:
    assert apply_migrations(empty_db, REPO_SQL, target="2") == ["001", "002"]
    assert "finetune_pod_attempts" not in _tables(empty_db)
    assert apply_migrations(empty_db, REPO_SQL) == REPO_VERSIONS[2:]


def test_unknown_target_is_refused(empty_db: str) -> None:
    with pytest.raises(MigrationError, match="unknown target version 'V099'"):
        apply_migrations(empty_db, REPO_SQL, target="V099")
    assert _tables(empty_db) == set()


def test_changed_applied_file_stops_and_changes_nothing(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_repo_sql(tmp_path)
    apply_migrations(empty_db, directory, target="1")
    before = (_history(empty_db), _tables(empty_db))
    with (directory / "V001__create_core_tables.sql").open("a") as handle:
        handle.write("\n-- an edit after the fact\n")
    with pytest.raises(MigrationError) as error:
        apply_migrations(empty_db, directory)
    message = str(error.value)
    assert "\n" not in message
    assert "checksum mismatch" in message and "V001__create_core_tables.sql" in message
    # The later versions were pending and valid, yet nothing was applied.
    assert (_history(empty_db), _tables(empty_db)) == before


@pytest.mark.parametrize(
    ("bad_name", "expected"),
    [
        pytest.param("V2_foo.sql", "misnamed migration file V2_foo.sql", id="single-underscore"),
        pytest.param("v004__x.sql", "misnamed migration file v004__x.sql", id="lowercase-v"),
        pytest.param("V004__x.SQL", "misnamed migration file V004__x.SQL", id="upper-extension"),
        pytest.param("notes.txt", "misnamed migration file notes.txt", id="stray-file"),
        pytest.param("V099__later.sql", "version gap: V099__later.sql", id="gap"),
        pytest.param("V03__again.sql", "duplicate migration version 3", id="duplicate-version"),
    ],
)
def test_bad_directory_stops_before_anything_is_applied(
    empty_db: str, tmp_path: Path, bad_name: str, expected: str
) -> None:
    directory = _copy_repo_sql(tmp_path)
    (directory / bad_name).write_text("CREATE TABLE should_not_exist (x int);\n")
    with pytest.raises(MigrationError) as error:
        apply_migrations(empty_db, directory)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    assert _tables(empty_db) == set()


def test_hidden_files_are_ignored(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_repo_sql(tmp_path)
    (directory / ".gitkeep").write_text("")
    assert apply_migrations(empty_db, directory) == REPO_VERSIONS


def test_applied_file_that_vanished_stops(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_repo_sql(tmp_path)
    apply_migrations(empty_db, directory)
    # The newest one: removing an older one would be refused as a version gap first.
    version, name = REPO_MIGRATIONS[-1]
    (directory / f"V{version}__{name}.sql").unlink()
    with pytest.raises(MigrationError, match=f"V{version}__{name}.sql is missing"):
        apply_migrations(empty_db, directory)


def test_failing_migration_rolls_back_alone(empty_db: str, tmp_path: Path) -> None:
    directory = _make_dir(
        tmp_path,
        {
            "V001__ok.sql": "CREATE TABLE first_table (x int);\n",
            "V002__broken.sql": "CREATE TABLE second_table (x int);\nSELECT no_such_column FROM first_table;\n",
        },
    )
    with pytest.raises(MigrationError) as error:
        apply_migrations(empty_db, directory)
    assert str(error.value).startswith("migration V002__broken.sql failed: ")
    assert "\n" not in str(error.value)
    assert [v for v, _, _ in _history(empty_db)] == ["001"]
    assert _tables(empty_db) == {"first_table", "schema_migrations"}


def test_concurrent_runs_apply_once(empty_db: str, tmp_path: Path) -> None:
    # A slow first migration widens the window in which both runs would otherwise apply it.
    directory = _make_dir(
        tmp_path,
        {
            "V001__slow.sql": "SELECT pg_sleep(0.5);\nCREATE TABLE once_only (x int);\n",
            "V002__next.sql": "CREATE TABLE second (x int);\n",
        },
    )
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            results.append(apply_migrations(empty_db, directory))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(results) == [[], ["001", "002"]]
    assert [v for v, _, _ in _history(empty_db)] == ["001", "002"]


def test_missing_directory_is_one_line(empty_db: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="migrations directory not found"):
        apply_migrations(empty_db, tmp_path / "nope")


def test_default_dir_prefers_env_then_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_MIGRATIONS_DIR", str(tmp_path))
    assert default_migrations_dir() == tmp_path
    monkeypatch.delenv("FINETUNE_MIGRATIONS_DIR")
    assert default_migrations_dir() == REPO_SQL
    assert Path(migrate.__file__).resolve().parents[3] / "sql" == REPO_SQL
