"""Peak working set and memory limit of the pod, for ``pod_usage`` and the sizing recommender.

The kernel's own figure is preferred: the memory cgroup's peak (cgroup v1
``memory.max_usage_in_bytes``, v2 ``memory.peak``) counts every process of the container and the
page cache it charged, which is what the OOM killer compares with the limit. It is trusted only
for a group with a finite limit: a group without one is the host's or a login session's, whose
peak counts processes that are not ours. Otherwise ``getrusage`` gives the peak resident set of
this process plus that of its largest waited-for child (times the worker processes that ran side
by side: :mod:`finetune.workers`).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no real limit.
UNLIMITED_THRESHOLD = 1 << 60


@dataclass(frozen=True)
class CgroupFiles:
    """Where this process's memory cgroup keeps its peak and its limit."""

    peak: Path
    limit: Path


@dataclass(frozen=True)
class Usage:
    peak_memory_bytes: int
    memory_limit_bytes: int | None
    source: str  # "cgroup" or "rusage": which measurement the peak comes from


def _memory_cgroup(proc_self_cgroup: Path, cgroup_root: Path) -> CgroupFiles | None:
    """The memory cgroup files of this process, v1 or v2, if the hierarchy is mounted."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            base, peak, limit = cgroup_root / "memory", "memory.max_usage_in_bytes", "memory.limit_in_bytes"
        elif controllers == "" and (cgroup_root / "cgroup.controllers").exists():
            base, peak, limit = cgroup_root, "memory.peak", "memory.max"
        else:
            continue
        # Without a cgroup namespace the path is the host's view, mounted as-is under the root;
        # inside a container the root itself is often the container's group.
        for group in (base / path.lstrip("/"), base):
            if (group / peak).is_file():
                return CgroupFiles(peak=group / peak, limit=group / limit)
    return None


def _read_bytes(path: Path) -> int | None:
    """An integer byte count from a cgroup file; ``None`` when unreadable or unlimited."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # v2 writes "max" for no limit
        return None
    value = int(text)
    return value if 0 < value < UNLIMITED_THRESHOLD else None


def rusage_peak_bytes(workers: int = 1) -> int:
    """Peak resident set of this process plus ``workers`` times its largest waited-for child
    (Linux reports KiB): worker processes run side by side, and the kernel keeps only the largest
    child's peak, so their sum is bounded from above (pages they share with the parent counted
    in each)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + max(workers, 1) * children) * 1024


def measure_usage(
    environ: Mapping[str, str] | None = None,
    *,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    cgroup_root: Path = CGROUP_ROOT,
    workers: int = 1,
) -> Usage:
    """The pod's peak and limit now (call at the end of the run for the run's peak).

    The limit comes from ``FINETUNE_MEMORY_LIMIT_BYTES`` (the downward API's ``limits.memory``),
    else the cgroup's limit, else ``None``.
    """
    env = os.environ if environ is None else environ
    files = _memory_cgroup(proc_self_cgroup, cgroup_root)
    cgroup_limit = _read_bytes(files.limit) if files else None
    configured = env.get("FINETUNE_MEMORY_LIMIT_BYTES", "").strip()
    limit = int(configured) if configured.isdigit() and int(configured) > 0 else cgroup_limit
    cgroup_peak = _read_bytes(files.peak) if files and cgroup_limit is not None else None
    if cgroup_peak is not None:
        return Usage(peak_memory_bytes=cgroup_peak, memory_limit_bytes=limit, source="cgroup")
    return Usage(peak_memory_bytes=rusage_peak_bytes(workers), memory_limit_bytes=limit, source="rusage")


def memory_limit_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """The limit alone, known at the start of the run (recorded with the ``running`` status)."""
    return measure_usage(environ).memory_limit_bytes
