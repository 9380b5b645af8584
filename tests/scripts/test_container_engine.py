"""container_engine: the project's containers.conf, the engine found, the steps' timing lines."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

import container_engine
from container_engine import EngineUnavailable, Steps, containers_conf, current_limits, find_engine


def test_containers_conf_pins_runc_and_the_limits() -> None:
    text = containers_conf(nofile=20000, nproc=32768, runtime="runc", systemd=False)

    assert text.splitlines() == [
        "[containers]",
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
        "[engine]",
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
    ]


def test_containers_conf_keeps_the_defaults_it_need_not_change() -> None:
    text = containers_conf(nofile=1024, nproc=512, runtime=None, systemd=True)

    assert "runtime" not in text and "cgroup_manager" not in text
    assert 'default_ulimits = ["nofile=1024:1024", "nproc=512:512"]' in text


def test_current_limits_are_this_process_hard_limits_nproc_within_pid_max() -> None:
    nofile, nproc = current_limits()

    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert nofile == (1048576 if hard_nofile == resource.RLIM_INFINITY else hard_nofile)
    assert 0 < nproc <= int(Path("/proc/sys/kernel/pid_max").read_text())


def test_no_engine_on_the_path_is_unavailable_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EngineUnavailable, match=r"^no container engine: install podman"):
        find_engine(tmp_path / "cache")


def test_a_docker_without_daemon_is_unavailable_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EngineUnavailable, match="docker has no daemon: Cannot connect to the Docker daemon"):
        find_engine(tmp_path / "cache")


def test_steps_print_each_step_and_its_failure(capsys: pytest.CaptureFixture[str]) -> None:
    steps = Steps("image-test")
    with steps.step("first"):
        pass
    with pytest.raises(RuntimeError), steps.step("second"):
        raise RuntimeError("boom")

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image-test: ok ") and lines[0].endswith("  first")
    assert lines[1].startswith("image-test: FAILED") and lines[1].endswith("  second")
    assert [name for name, _ in steps.times] == ["first", "second"]


def test_the_cache_is_the_folder_make_clean_removes() -> None:
    makefile = (container_engine.REPO_ROOT / "Makefile").read_text()

    assert container_engine.CACHE_DIR.name == ".image"
    assert any(line.startswith("\trm -rf ") and " .image" in line for line in makefile.splitlines())
