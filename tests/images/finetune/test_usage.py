"""finetune.usage: cgroup v1/v2 peaks and limits from a fake hierarchy, else getrusage."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.usage import measure_usage, rusage_peak_bytes

GIB = 1 << 30
V1_UNLIMITED = "9223372036854771712"


def _make_v1(tmp_path: Path, *, peak: str, limit: str, group: str = "kubepods/pod1/c1") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    directory = root / "memory" / group
    directory.mkdir(parents=True)
    (directory / "memory.max_usage_in_bytes").write_text(peak + "\n")
    (directory / "memory.limit_in_bytes").write_text(limit + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"9:name=systemd:/\n4:memory:/{group}\n1:cpu:/\n0::/\n")
    return proc, root


def _make_v2(tmp_path: Path, *, peak: str | None, limit: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    if peak is not None:
        (root / "memory.peak").write_text(peak + "\n")
    (root / "memory.max").write_text(limit + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/\n")  # inside a cgroup namespace the container's group is the root
    return proc, root


def test_v1_group_peak_and_limit(tmp_path: Path) -> None:
    proc, root = _make_v1(tmp_path, peak=str(300 * 1024**2), limit=str(GIB))
    usage = measure_usage({}, proc_self_cgroup=proc, cgroup_root=root)
    assert (usage.peak_memory_bytes, usage.memory_limit_bytes, usage.source) == (300 * 1024**2, GIB, "cgroup")


def test_v1_container_root_when_host_path_is_not_mounted(tmp_path: Path) -> None:
    proc, root = _make_v1(tmp_path, peak="1000", limit=str(GIB), group="")
    proc.write_text("4:memory:/kubepods/pod1/c1\n")
    assert measure_usage({}, proc_self_cgroup=proc, cgroup_root=root).peak_memory_bytes == 1000


def test_v2_peak_and_limit(tmp_path: Path) -> None:
    proc, root = _make_v2(tmp_path, peak="5000", limit=str(2 * GIB))
    usage = measure_usage({}, proc_self_cgroup=proc, cgroup_root=root)
    assert (usage.peak_memory_bytes, usage.memory_limit_bytes, usage.source) == (5000, 2 * GIB, "cgroup")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: _make_v1(tmp, peak="5000", limit=V1_UNLIMITED), id="v1-unlimited"),
        pytest.param(lambda tmp: _make_v2(tmp, peak="5000", limit="max"), id="v2-max"),
        pytest.param(lambda tmp: _make_v2(tmp, peak=None, limit=str(GIB)), id="v2-no-peak-file"),
    ],
)
def test_falls_back_to_rusage_without_a_trustworthy_group(tmp_path: Path, make) -> None:
    proc, root = make(tmp_path)
    usage = measure_usage({}, proc_self_cgroup=proc, cgroup_root=root)
    assert usage.source == "rusage"
    assert usage.peak_memory_bytes >= 10 * 1024**2  # a Python process with numpy holds more than this


def test_env_limit_wins_over_the_cgroup(tmp_path: Path) -> None:
    proc, root = _make_v1(tmp_path, peak="1000", limit=str(GIB))
    usage = measure_usage({"FINETUNE_MEMORY_LIMIT_BYTES": str(8 * GIB)}, proc_self_cgroup=proc, cgroup_root=root)
    assert usage.memory_limit_bytes == 8 * GIB


def test_unreadable_proc_file_means_rusage_and_no_limit(tmp_path: Path) -> None:
    usage = measure_usage({}, proc_self_cgroup=tmp_path / "missing", cgroup_root=tmp_path)
    assert (usage.source, usage.memory_limit_bytes) == ("rusage", None)


def test_rusage_peak_is_in_bytes() -> None:
    peak = rusage_peak_bytes()
    assert 10 * 1024**2 < peak < 64 * GIB
