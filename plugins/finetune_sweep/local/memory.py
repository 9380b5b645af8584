"""Memory enforcement of the local pod backend: cgroups (v1 / v2), a watchdog, the kernel's peak.

The kubelet puts a container in a memory cgroup; the kernel kills it past its limit and counts its
peak. :mod:`finetune_sweep.local.pod_runner` does the same where the machine allows it (a writable memory
controller: :func:`create_cgroup`), else it falls back to :class:`Watchdog`, which polls the
resident memory of the process tree and SIGKILLs it past the limit (best effort: sampling cannot
stop an allocation between two polls).

The *peak* never comes from sampling alone: a 20 ms process that touches 8 MiB is easily missed
between two polls on a busy machine. The cgroup's own peak (``memory.max_usage_in_bytes`` /
``memory.peak``) covers the whole group where there is one; without a cgroup, :class:`KernelPeak`
runs the container under a small launcher that waits for it with ``os.wait4`` and reports the
kernel's ``ru_maxrss`` (the largest of the process and its waited-for descendants), exact
whatever the load.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

__all__ = [
    "CGROUP_V1_MEMORY_ROOT",
    "CGROUP_V2_ROOT",
    "Cgroup",
    "CgroupUnavailable",
    "KernelPeak",
    "Watchdog",
    "create_cgroup",
    "kill_process_group",
]

LOG = logging.getLogger(__name__)

CGROUP_V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
CGROUP_V2_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No writable memory cgroup on this machine; the message says what was tried."""


class Cgroup:
    """A memory cgroup for one container; subclasses know the v1 / v2 file names."""

    kind = "cgroup"
    limit_file = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def set_limit(self, limit: int) -> None:
        (self.path / self.limit_file).write_text(str(limit))

    def oom_kills(self) -> int:
        raise NotImplementedError

    def peak(self) -> int | None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        try:
            return [int(line) for line in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, *, timeout: float = 10.0) -> None:
        """Kill what is left in the group (the kubelet does), then remove it."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            for pid in pids:
                _kill(pid)
            if not pids:
                try:
                    self.path.rmdir()
                    return
                except FileNotFoundError:
                    return
                except OSError as exc:  # EBUSY while the kernel finishes tearing a task down
                    if time.monotonic() > deadline:
                        LOG.warning("could not remove cgroup %s: %s", self.path, exc)
                        return
            elif time.monotonic() > deadline:
                LOG.warning("cgroup %s still holds pids %s after %.0fs", self.path, pids, timeout)
                return
            time.sleep(0.05)


class _CgroupV1(Cgroup):
    kind = "cgroup-v1"
    limit_file = "memory.limit_in_bytes"

    def set_limit(self, limit: int) -> None:
        super().set_limit(limit)
        memsw = self.path / "memory.memsw.limit_in_bytes"
        # memory+swap = memory: no swapping past the limit (kubelet default, no swap for pods)
        if memsw.exists():
            memsw.write_text(str(limit))

    def oom_kills(self) -> int:
        return _read_key(self.path / "memory.oom_control", "oom_kill")

    def peak(self) -> int | None:
        return int((self.path / "memory.max_usage_in_bytes").read_text())


class _CgroupV2(Cgroup):
    kind = "cgroup-v2"
    limit_file = "memory.max"

    def set_limit(self, limit: int) -> None:
        super().set_limit(limit)
        swap = self.path / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")

    def oom_kills(self) -> int:
        return _read_key(self.path / "memory.events", "oom_kill")

    def peak(self) -> int | None:
        peak = self.path / "memory.peak"  # kernel >= 5.19
        return int(peak.read_text()) if peak.exists() else None


def _read_key(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def create_cgroup(*, name: str, v1_root: Path = CGROUP_V1_MEMORY_ROOT, v2_root: Path = CGROUP_V2_ROOT) -> Cgroup:
    """Create a memory cgroup ``name`` (v1 memory controller first, else v2 with memory enabled).

    :param name: the child group's directory name.
    :param v1_root: mount of the v1 memory controller.
    :param v2_root: mount of the unified (v2) hierarchy.
    :raises CgroupUnavailable: when no writable memory controller is available.
    """
    problems: list[str] = []
    if (v1_root / "memory.limit_in_bytes").exists() or (v1_root / "memory.stat").exists():
        try:
            (v1_root / name).mkdir()
            return _CgroupV1(v1_root / name)
        except OSError as exc:
            problems.append(f"{v1_root}: {exc.strerror}")
    controllers = v2_root / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        try:
            subtree = v2_root / "cgroup.subtree_control"
            if "memory" not in subtree.read_text().split():
                subtree.write_text("+memory")
            (v2_root / name).mkdir()
            group = _CgroupV2(v2_root / name)
            if not (group.path / "memory.max").exists():
                group.path.rmdir()
                raise CgroupUnavailable(f"{v2_root}: memory controller not delegated to {name}")
            return group
        except OSError as exc:
            problems.append(f"{v2_root}: {exc.strerror}")
    raise CgroupUnavailable("no writable memory cgroup (" + ("; ".join(problems) or "no memory controller") + ")")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process exited while we scanned
            continue
        # the comm field may contain spaces and parentheses: ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, ()))
    return pids


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:  # exited: holds no memory any more
        return 0
    return 0  # a zombie has no VmRSS line


class Watchdog(threading.Thread):
    """Poll the resident memory of a process tree; SIGKILL the tree past the limit.

    Sampling cannot stop an allocation between two polls, so a fast allocator can overshoot the
    limit before it is killed: the kernel (cgroup) is the real enforcement, this is the fallback.
    Its :attr:`peak` is the largest *sum* over the tree it saw (a tree's processes together can
    exceed any one's kernel peak); the exact figure of the container is :class:`KernelPeak`'s.

    :param pid: the root of the tree.
    :param limit: bytes; None: measure only.
    :param interval: seconds between two polls.
    :param skip_root: leave the root out (the :class:`KernelPeak` launcher: not the container's
        memory, and it must survive the kill to report the container's peak).
    """

    def __init__(self, pid: int, *, limit: int | None, interval: float = 0.02, skip_root: bool = False) -> None:
        super().__init__(name=f"local-pod-watchdog-{pid}", daemon=True)
        self.pid = pid
        self.limit = limit
        self.interval = interval
        self.skip_root = skip_root
        self.peak = 0
        self.killed = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = _tree_pids(self.pid)
            if self.skip_root:
                pids = [pid for pid in pids if pid != self.pid]
            usage = sum(_rss_bytes(pid) for pid in pids)
            self.peak = max(self.peak, usage)
            if self.limit is not None and usage > self.limit:
                self.killed = True
                for pid in pids:
                    _kill(pid)
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """End the polling (the container exited)."""
        self._stop_event.set()


# Runs as ``python -I -S -c PEAK_LAUNCHER FD COMMAND...``: forks, execs COMMAND in the child, waits
# for it with wait4 and writes the child's ru_maxrss (bytes) to FD, then exits as the child did
# (same code, or killed by the same signal). Why a launcher: a process forked from the Airflow
# worker (hundreds of MiB) inherits the worker's high-water mark through fork + exec, so its own
# ru_maxrss says "the worker's size", not its own; forked from this small launcher, the figure is
# the container's own peak (with a floor of the launcher's few MiB).
PEAK_LAUNCHER = r"""
import os, signal, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A stop signal to the process group is for the container: the launcher outlives it to report.
# One that arrives before the container exists is kept and passed on once it does (a deadline
# may fire while a busy machine is still starting the launcher); later ones reach it directly.
early = []
for sig in stops:
    signal.signal(sig, lambda sig, frame: early.append(sig))
signal.pthread_sigmask(signal.SIG_BLOCK, stops)
pid = os.fork()
if pid == 0:
    for sig in (*stops, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    os.close(fd)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"exec {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
for sig in stops:
    signal.signal(sig, signal.SIG_IGN)
for sig in sorted(set(early)):
    os.kill(pid, sig)
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
os.write(fd, str(usage.ru_maxrss * 1024).encode())
os.close(fd)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.WEXITSTATUS(status))
"""


class KernelPeak:
    """The container's peak resident memory from the kernel (``ru_maxrss`` via ``wait4``).

    Wraps the container's command in :data:`PEAK_LAUNCHER`; after the launcher exited,
    :meth:`read` gives the figure (None when the launcher itself was SIGKILLed).
    """

    def __init__(self) -> None:
        self._read_fd, self.write_fd = os.pipe()

    def argv(self, command: list[str], *, python: str) -> list[str]:
        """The launcher's command line around ``command``; pass :attr:`write_fd` to the child.

        :param command: the container's command.
        :param python: the interpreter that runs the launcher.
        """
        return [python, "-I", "-S", "-c", PEAK_LAUNCHER, str(self.write_fd), *command]

    def started(self) -> None:
        """The launcher has its copy of the pipe: close ours, so that :meth:`read` sees its end."""
        os.close(self.write_fd)

    def read(self) -> int | None:
        """The peak in bytes (once the launcher exited); None when it reported nothing."""
        try:
            raw = os.read(self._read_fd, 64)
        finally:
            os.close(self._read_fd)
        return int(raw) if raw.strip().isdigit() else None


def kill_process_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the whole process group (the container's session); gone already is fine.

    :param pgid: the group (the container's main process started a session of its own).
    :param sig: the signal (SIGKILL by default; SIGTERM to ask first).
    """
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
