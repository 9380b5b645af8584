"""The container engine of ``make image`` and ``make image-test``: which one, and how it runs here.

podman (Debian's, rootful) is preferred; docker only where its daemon answers. Two traps of this
kind of machine are handled for podman through a project-local ``containers.conf`` that
``CONTAINERS_CONF`` points at (nothing under /etc is edited):

- crun refuses hybrid cgroups (v1 controllers beside a v2 mount): the runtime is runc;
- podman's default ulimits for root (nofile 1048576, nproc 4194304) exceed what root may set
  here (no CAP_SYS_RESOURCE), and podman lowers its own nproc to the kernel's ``pid_max``: every
  container gets the current limits instead, nproc capped at ``pid_max``.

Every podman call runs in a scratch folder under the cache: conmon writes its ``oom`` marker into
its working directory (see ``scripts/image_test.py``), never into the caller's checkout.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Everything the image targets cache or write (the base's rootfs tarball, containers.conf, the
# engine's scratch folder); `make clean` removes it.
CACHE_DIR = REPO_ROOT / ".image"
PID_MAX = Path("/proc/sys/kernel/pid_max")


class EngineUnavailable(RuntimeError):
    """No container engine can run on this machine; the message says why (the image test skips)."""


class EngineError(RuntimeError):
    """An engine command failed; the message is the command and the engine's last line."""


def containers_conf(*, nofile: int, nproc: int, runtime: str | None, systemd: bool) -> str:
    """The text of the project's ``containers.conf``.

    :param nofile: open files limit of every container (soft = hard).
    :param nproc: processes limit of every container (soft = hard).
    :param runtime: the OCI runtime to use (``runc``), None for podman's default.
    :param systemd: whether systemd manages cgroups here (else cgroupfs, and events to a file).
    """
    lines = ["[containers]", f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]', "[engine]"]
    if runtime:
        lines.append(f'runtime = "{runtime}"')
    if not systemd:
        lines += ['cgroup_manager = "cgroupfs"', 'events_logger = "file"']
    return "\n".join(lines) + "\n"


def current_limits() -> tuple[int, int]:
    """(nofile, nproc) a container may get here: this process's hard limits, nproc at most ``pid_max``."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(PID_MAX.read_text()) if PID_MAX.exists() else nproc
    unlimited = resource.RLIM_INFINITY
    nofile = 1048576 if nofile == unlimited else nofile
    nproc = pid_max if nproc == unlimited else min(nproc, pid_max)
    return nofile, nproc


@dataclass(frozen=True)
class Engine:
    """A container engine command (``podman`` or ``docker``) with its environment.

    :param name: ``podman`` or ``docker``.
    :param env: the environment of every call (``CONTAINERS_CONF`` for podman).
    :param scratch: the working directory of every call.
    """

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    scratch: Path = CACHE_DIR / "scratch"

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 900,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<engine> args``; its output is captured.

        :param args: the engine's arguments.
        :param input: text for its standard input (a secret never goes on the command line).
        :param cwd: the working directory (default: the scratch folder).
        :param timeout: seconds before it is stopped.
        :param check: raise :class:`EngineError` on a non-zero exit.
        """
        self.scratch.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [self.name, *args],
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd or self.scratch,
            env={**os.environ, **self.env},
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise EngineError(f"{self.name} {' '.join(args[:2])} failed (exit {done.returncode}): {said}")
        return done


def find_engine(cache_dir: Path = CACHE_DIR) -> Engine:
    """The engine of this machine: podman when installed and working, else a docker whose daemon answers.

    :param cache_dir: where the project's ``containers.conf`` and the scratch folder go.
    :raises EngineUnavailable: neither can run here (the message says why).
    """
    if shutil.which("podman"):
        cache_dir.mkdir(parents=True, exist_ok=True)
        conf = cache_dir / "containers.conf"
        nofile, nproc = current_limits()
        conf.write_text(
            containers_conf(
                nofile=nofile,
                nproc=nproc,
                runtime="runc" if shutil.which("runc") else None,
                systemd=Path("/run/systemd/system").is_dir(),
            )
        )
        engine = Engine("podman", {"CONTAINERS_CONF": str(conf)}, cache_dir / "scratch")
        info = engine.run(["info", "--format", "{{.Host.OCIRuntime.Name}}"], check=False, timeout=60)
        if info.returncode != 0:
            said = (info.stderr.strip() or "no output").splitlines()[-1]
            raise EngineUnavailable(f"podman is installed but cannot run here: {said}")
        return engine
    if shutil.which("docker"):
        engine = Engine("docker", {}, cache_dir / "scratch")
        info = engine.run(["info", "--format", "{{.ServerVersion}}"], check=False, timeout=60)
        if info.returncode == 0:
            return engine
        said = (info.stderr.strip() or "no output").splitlines()[-1]
        raise EngineUnavailable(f"no podman, and docker has no daemon: {said}")
    raise EngineUnavailable("no container engine: install podman (apt-get install podman buildah runc)")


class Steps:
    """Named steps, each printed with its duration as it ends, and the total."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.started = time.monotonic()
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step; its line is printed when it ends (also when it fails)."""
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.monotonic() - start
            self.times.append((name, seconds))
            print(f"{self.title}: {'ok ' if ok else 'FAILED'} {seconds:6.1f} s  {name}", flush=True)

    def total(self) -> float:
        """Seconds since the steps began."""
        return time.monotonic() - self.started


def fail(message: str) -> int:
    """Print one error line and return the exit code 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1
