"""Local pod backend: run one pod's base container as a local process (DESIGN section 7).

This is an **emulation of the kubelet for one container**, for development and CI, not a container
runtime. Given the very ``V1Pod`` that the KubernetesPodOperator would submit, it:

- runs the first container's ``command`` + ``args`` (``python`` is this interpreter,
  ``sys.executable``, so the editable-installed ``finetune`` package of the Airflow venv is used);
  ``$(VAR)`` references are expanded like the kubelet does;
- builds that container's environment: literal values, ``fieldRef`` (``metadata.name``,
  ``metadata.namespace``, labels/annotations), ``resourceFieldRef`` (``limits.memory`` is the
  container's memory limit in bytes, as the downward API gives it) and the ``secretKeyRef`` of the
  database Secret, resolved from the Airflow connection ``finetune_db``; any other Secret or
  ConfigMap reference is refused with a clear error (there is no API server to read it from);
- enforces the container's memory limit (:mod:`finetune_sweep.local.memory`): a memory
  cgroup where the machine allows it (cgroup v1 ``memory.limit_in_bytes``, or cgroup v2
  ``memory.max``), so the kernel kills the process past its limit exactly as in a pod; otherwise a
  watchdog thread polls the resident memory of the process tree and SIGKILLs it past the limit
  (best effort: it samples, the kernel does not). The peak comes from the kernel either way (the
  cgroup's peak, or ``ru_maxrss`` from ``wait4``), never from sampling alone;
- enforces the pod's ``activeDeadlineSeconds`` like the kubelet: past it, SIGTERM to the
  container's process group, SIGKILL after ``terminationGracePeriodSeconds`` (default 30), and the
  outcome's reason is ``DeadlineExceeded``, the reason Kubernetes gives such a pod;
- streams stdout/stderr lines into the given logger as they come, parses the runner's JSON events
  (``pod_usage`` carries the pod's own peak) and reports the outcome the way a kubelet reports a
  terminated container: exit code, ``OOMKilled`` / ``Error`` / ``Completed``.

Not emulated: images (the local checkout is the image), volumes, probes, security contexts,
init and sidecar containers, networking. Secret values never reach a log line: the environment is
never logged and every streamed line is redacted.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from finetune_sweep.db.dsn import dsn_from_connection, redact
from finetune_sweep.local.memory import (
    CGROUP_V1_MEMORY_ROOT,
    CGROUP_V2_ROOT,
    Cgroup,
    CgroupUnavailable,
    KernelPeak,
    Watchdog,
    create_cgroup,
    kill_process_group,
)
from finetune_sweep.outcomes import DEADLINE_EXCEEDED, OOM_REASON
from finetune_sweep.pods.termination import PodTermination, parse_event_line, pod_failure_detail
from finetune_sweep.sizing.quantities import cpu_millis, format_bytes, parse_quantity

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from kubernetes.client import models as k8s

__all__ = [
    "LocalPodError",
    "LocalPodResult",
    "LocalPodRunner",
    "run_pod_locally",
]

LOG = logging.getLogger(__name__)

# What a container gets from its image rather than from the pod spec: enough to run a process on
# this machine. Everything else of the Airflow worker's environment (its connections, secrets,
# config) stays out, as it would in a pod.
DEFAULT_INHERITED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)

Enforcement = Literal["auto", "cgroup", "watchdog", "none"]
# The kubelet's terminated reasons, and DeadlineExceeded, the pod's reason past its
# activeDeadlineSeconds (set from finetune_sweep.outcomes: OOM_REASON, DEADLINE_EXCEEDED).
Reason = Literal["Completed", "Error", "OOMKilled", "DeadlineExceeded"]

_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class LocalPodError(RuntimeError):
    """The pod spec cannot be run locally (unsupported reference, missing command, no cgroup)."""


@dataclass(frozen=True)
class LocalPodResult:
    """How the emulated container terminated.

    :param exit_code: the container's exit code; 137 (128 + SIGKILL) when killed.
    :param oom_killed: whether the memory limit killed it (kernel OOM kill or watchdog).
    :param peak_memory_bytes: peak memory of the container from the kernel (the cgroup's peak,
        else the process's ``ru_maxrss`` or the watchdog's tree sample, whichever is larger;
        without enforcement the runner's own ``pod_usage`` report); None when unknown.
    :param memory_limit_bytes: the enforced limit, None when the container has none.
    :param seconds: wall time from start to exit.
    :param reason: the kubelet's terminated reason: ``Completed``, ``Error`` or ``OOMKilled``;
        ``DeadlineExceeded`` (the pod's reason) when ``activeDeadlineSeconds`` stopped it.
    :param enforcement: how the limit was enforced: ``cgroup-v1``, ``cgroup-v2``, ``watchdog``
        or ``none``.
    :param pod_usage: the runner's last ``pod_usage`` event, if any.
    :param log_tail: the last output lines (redacted), for error messages.
    :param events: the last JSON event of each name the container printed (redacted).
    :param message: the pod's status message, as Kubernetes would write it (``DeadlineExceeded``).
    """

    exit_code: int
    oom_killed: bool
    peak_memory_bytes: int | None
    memory_limit_bytes: int | None
    seconds: float
    reason: Reason
    enforcement: str = "none"
    pod_usage: dict[str, Any] | None = None
    log_tail: tuple[str, ...] = field(default_factory=tuple)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the container completed with exit code 0."""
        return self.reason == "Completed"

    def termination(self) -> PodTermination:
        """How the container ended, in the shape the operator classifies any backend's pod end."""
        return PodTermination(
            reason=self.reason,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            memory_limit_bytes=self.memory_limit_bytes,
            peak_memory_bytes=self.peak_memory_bytes,
            seconds=self.seconds,
            detail=self.message or pod_failure_detail(self.events, list(self.log_tail)),
        )


# --------------------------------------------------------------------------- pod spec -> process


def _memory_limit_bytes(container: k8s.V1Container) -> int | None:
    resources = container.resources
    limits = (resources.limits if resources is not None else None) or {}
    quantity = limits.get("memory")
    return None if quantity is None else parse_quantity(str(quantity))


def _physical_memory_bytes() -> int:
    # Without a limit the downward API reports the node's allocatable memory.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _resource_field_value(container: k8s.V1Container, ref: k8s.V1ResourceFieldSelector) -> str:
    """The downward API value of ``resourceFieldRef`` (memory in bytes, cpu in cores, ceiling)."""
    kind, _, resource = ref.resource.partition(".")
    resources = container.resources
    values = (getattr(resources, kind, None) if resources is not None else None) or {}
    if resource == "memory":
        raw = values.get("memory")
        amount = parse_quantity(str(raw)) if raw is not None else _physical_memory_bytes()
        divisor = parse_quantity(str(ref.divisor)) if ref.divisor else 1
        return str(-(-amount // divisor))
    if resource == "cpu":
        raw = values.get("cpu")
        # cpu quantities are fractional ("500m"): compute in millicores
        millis = cpu_millis(str(raw)) if raw is not None else 1000 * (os.cpu_count() or 1)
        divisor = cpu_millis(str(ref.divisor)) if ref.divisor else 1000
        return str(-(-millis // divisor))
    raise LocalPodError(f"resourceFieldRef {ref.resource!r} is not supported by the local pod backend")


def _field_value(pod: k8s.V1Pod, path: str) -> str:
    """The downward API value of ``fieldRef.fieldPath`` for this (local) pod."""
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid or "",
        "spec.nodeName": os.uname().nodename,
        "spec.serviceAccountName": (pod.spec.service_account_name or "default"),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path] or ""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        mapping = getattr(meta, match.group(1)) or {}
        return str(mapping.get(match.group(2), ""))
    raise LocalPodError(f"fieldRef {path!r} is not supported by the local pod backend")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` from the variables defined so far; ``$$`` escapes, unknown stays as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _ENV_REFERENCE.sub(replace, value)


def build_container_env(
    pod: k8s.V1Pod,
    container: k8s.V1Container,
    *,
    resolve_secret: Callable[[str, str], str],
) -> dict[str, str]:
    """The environment the kubelet would give ``container`` (pod-spec part only).

    :param pod: the pod (for ``fieldRef``).
    :param container: the container whose ``env`` is resolved, in order.
    :param resolve_secret: ``(secret name, key) -> value``; raises :class:`LocalPodError` for a
        Secret it cannot serve.
    """
    if container.env_from:
        raise LocalPodError(
            f"container {container.name!r} uses envFrom, which the local pod backend cannot resolve; "
            "use env entries (value / secretKeyRef of the database Secret) instead"
        )
    env: dict[str, str] = {}
    for var in container.env or []:
        source = var.value_from
        if source is None:
            env[var.name] = _expand(var.value or "", env)
        elif source.secret_key_ref is not None:
            ref = source.secret_key_ref
            env[var.name] = resolve_secret(ref.name, ref.key)
        elif source.field_ref is not None:
            env[var.name] = _field_value(pod, source.field_ref.field_path)
        elif source.resource_field_ref is not None:
            env[var.name] = _resource_field_value(container, source.resource_field_ref)
        else:
            raise LocalPodError(
                f"env var {var.name!r}: only value, secretKeyRef (database Secret), fieldRef and "
                "resourceFieldRef are supported by the local pod backend"
            )
    return env


def build_argv(container: k8s.V1Container, env: Mapping[str, str], *, python: str) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; ``python``/``python3`` is ``python``.

    :param container: the container to run.
    :param env: its environment (for ``$(VAR)`` expansion).
    :param python: the interpreter that stands in for the image's ``python``.
    """
    command = list(container.command or [])
    if not command:
        raise LocalPodError(
            f"container {container.name!r} has no command: the local pod backend cannot know the "
            "image's entrypoint; set cmds=['python', '-m', 'finetune']"
        )
    argv = [_expand(str(part), env) for part in (*command, *(container.args or []))]
    if argv[0] in {"python", "python3"}:
        argv[0] = python
    return argv


# --------------------------------------------------------------------------- the runner


class LocalPodRunner:
    """Run the base container of one pod as a local process (see the module docstring).

    :param pod: the V1Pod the KubernetesPodOperator would submit (``build_pod_request_obj(...,
        dry_run=True)``).
    :param dsn: the database DSN that stands for the database Secret; resolved lazily from the
        Airflow connection ``conn_id`` when None and the pod asks for it.
    :param log: where output lines and lifecycle messages go (the task logger).
    :param db_secret: ``(secret name, key)`` of the database Secret; None: the Secret key that
        the container's ``FINETUNE_DB_URL`` refers to.
    :param conn_id: Airflow connection that holds the database.
    :param container_name: the container to run (default: the first one, the KPO's ``base``).
    :param enforcement: ``auto`` (cgroup, else watchdog), ``cgroup``, ``watchdog`` or ``none``.
    :param python: interpreter standing in for the image's ``python``.
    :param inherit_env: names of this process's variables that the container inherits (what an
        image would provide: PATH, HOME, locale ...).
    :param cgroup_v1_root: mount of the v1 memory controller (tests point elsewhere).
    :param cgroup_v2_root: mount of the unified hierarchy.
    """

    def __init__(
        self,
        pod: k8s.V1Pod,
        *,
        dsn: str | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        db_secret: tuple[str, str] | None = None,
        conn_id: str = "finetune_db",
        container_name: str | None = None,
        enforcement: Enforcement = "auto",
        python: str = sys.executable,
        inherit_env: Iterable[str] = DEFAULT_INHERITED_ENV,
        cgroup_v1_root: Path = CGROUP_V1_MEMORY_ROOT,
        cgroup_v2_root: Path = CGROUP_V2_ROOT,
    ) -> None:
        self.pod = pod
        self.log = log or LOG
        self._dsn = dsn
        self.db_secret = db_secret
        self.conn_id = conn_id
        self.container = self._container(container_name)
        self.enforcement = enforcement
        self.python = python
        self.inherit_env = tuple(inherit_env)
        self.cgroup_v1_root = cgroup_v1_root
        self.cgroup_v2_root = cgroup_v2_root
        self._secrets: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None

    def _container(self, name: str | None) -> k8s.V1Container:
        containers = self.pod.spec.containers or []
        if not containers:
            raise LocalPodError(f"pod {self.pod.metadata.name} has no container")
        if name is None:
            return containers[0]
        for container in containers:
            if container.name == name:
                return container
        raise LocalPodError(f"pod {self.pod.metadata.name} has no container {name!r}")

    # -- secrets

    def _resolve_secret(self, name: str, key: str) -> str:
        if not self._is_db_secret(name, key):
            raise LocalPodError(
                f"secretKeyRef {name}/{key}: the local pod backend resolves only the database Secret "
                f"(from the Airflow connection {self.conn_id!r}); other Secrets have no local source"
            )
        if self._dsn is None:
            self._dsn = dsn_from_connection(self.conn_id)
        # Lazy on purpose: the pod package (finetune) is optional on an Airflow worker, which needs
        # it only here, to run a pod locally; the kubernetes backend never imports it.
        from finetune.persistence import dsn_password

        # the password alone leaks as easily as the whole URI (e.g. in a libpq error message)
        for secret in (self._dsn, dsn_password(self._dsn)):
            if secret and secret not in self._secrets:
                self._secrets.append(secret)
                _mask_in_airflow_logs(secret)
        return self._dsn

    def _is_db_secret(self, name: str, key: str) -> bool:
        if self.db_secret is not None:
            return (name, key) == self.db_secret
        # No explicit Secret given: the one the container's FINETUNE_DB_URL points at is the database.
        for var in self.container.env or []:
            ref = var.value_from.secret_key_ref if var.value_from is not None else None
            if var.name == "FINETUNE_DB_URL" and ref is not None:
                return (ref.name, ref.key) == (name, key)
        return False

    # -- lifecycle

    def run(self) -> LocalPodResult:
        """Start the container, stream its output, wait, enforce, clean up; return the outcome."""
        env = {name: os.environ[name] for name in self.inherit_env if name in os.environ}
        # the kubelet sets HOSTNAME to the pod name
        env["HOSTNAME"] = self.pod.metadata.name or "local-pod"
        env.update(build_container_env(self.pod, self.container, resolve_secret=self._resolve_secret))
        command = build_argv(self.container, env, python=self.python)
        limit = _memory_limit_bytes(self.container)
        cgroup = self._cgroup(limit)
        enforcement = cgroup.kind if cgroup else ("watchdog" if self.enforcement != "none" else "none")
        argv = command
        if cgroup is not None:
            # write our own pid into the group, then exec: the container process is limited from
            # its first instruction, and no preexec_fn runs in a multi-threaded parent
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" || exit 125; exec "$@"', str(cgroup.procs_file), *command]
        # without a cgroup, the kernel's ru_maxrss of the container (through a small launcher)
        kernel_peak = KernelPeak() if cgroup is None and enforcement == "watchdog" else None
        if kernel_peak is not None:
            argv = kernel_peak.argv(command, python=self.python)
        deadline = self.pod.spec.active_deadline_seconds
        self.log.info(
            "local pod %s: running container %r (%s, memory limit %s, enforcement %s, activeDeadlineSeconds %s)",
            self.pod.metadata.name,
            self.container.name,
            redact(" ".join(command), self._secrets),
            format_bytes(limit),
            enforcement,
            deadline if deadline is not None else "none",
        )
        started = time.monotonic()
        watchdog: Watchdog | None = None
        timer: _ActiveDeadline | None = None
        tail: deque[str] = deque(maxlen=20)
        events: dict[str, dict[str, Any]] = {}
        try:
            self._process = process = subprocess.Popen(
                argv,
                env=env,
                cwd=self._working_dir(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # a session of its own: the whole tree can be signalled, like a pid namespace
                start_new_session=True,
                pass_fds=(kernel_peak.write_fd,) if kernel_peak is not None else (),
            )
            if kernel_peak is not None:
                kernel_peak.started()
            if deadline is not None:
                timer = _ActiveDeadline(
                    process.pid,
                    seconds=deadline,
                    grace_seconds=_grace_seconds(self.pod),
                    pod_name=self.pod.metadata.name,
                    log=self.log,
                )
                timer.start()
            if cgroup is None and enforcement == "watchdog":
                watchdog = Watchdog(process.pid, limit=limit, skip_root=kernel_peak is not None)
                watchdog.start()
            readers = [
                threading.Thread(
                    target=self._pump, args=(stream, label, tail, events), daemon=True, name=f"local-pod-{label}"
                )
                for stream, label in ((process.stdout, "stdout"), (process.stderr, "stderr"))
            ]
            for reader in readers:
                reader.start()
            returncode = process.wait()
            seconds = time.monotonic() - started
            # the container's main process is gone: the kubelet tears down everything left in it
            kill_process_group(process.pid)
            for reader in readers:
                reader.join(timeout=5)
            oom_kills = cgroup.oom_kills() if cgroup else 0
            # the cgroup counts the whole group (every process, page cache included)
            peak = cgroup.peak() if cgroup else None
        finally:
            if timer is not None:
                timer.cancel()
            if watchdog is not None:
                watchdog.stop()
                watchdog.join(timeout=5)
            if self._process is not None and self._process.poll() is None:
                # interrupted (task killed or timed out): take the container down with us
                kill_process_group(self._process.pid)
                self._process.wait()
            if cgroup is not None:
                cgroup.remove()
        if watchdog is not None:
            # a tree's sampled sum can exceed any one process's kernel peak: take the larger
            kernel = kernel_peak.read() if kernel_peak is not None else None
            peak = max(kernel or 0, watchdog.peak) or None
        pod_usage = events.get("pod_usage")
        if peak is None and pod_usage:
            peak = _int_or_none(pod_usage.get("peak_memory_bytes"))
        # a signalled process exits with 128 + signal in a container (SIGKILL: 137)
        exit_code = returncode if returncode >= 0 else 128 - returncode
        oom_killed = oom_kills > 0 or (watchdog is not None and watchdog.killed)
        deadline_exceeded = timer is not None and timer.fired
        message = None
        if oom_killed:
            reason: Reason = OOM_REASON
        elif deadline_exceeded:
            reason = DEADLINE_EXCEEDED
            message = (
                f"Pod was active on the node longer than the specified deadline (activeDeadlineSeconds {deadline})"
            )
        elif exit_code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        result = LocalPodResult(
            exit_code=exit_code,
            oom_killed=oom_killed,
            peak_memory_bytes=peak,
            memory_limit_bytes=limit,
            seconds=round(seconds, 3),
            reason=reason,
            enforcement=enforcement,
            pod_usage=pod_usage,
            log_tail=tuple(tail),
            events=events,
            message=message,
        )
        self.log.info(
            "local pod %s terminated: reason=%s exit_code=%s peak=%s limit=%s seconds=%.1f",
            self.pod.metadata.name,
            reason,
            exit_code,
            format_bytes(peak),
            format_bytes(limit),
            seconds,
        )
        return result

    def _working_dir(self) -> str | None:
        working_dir = self.container.working_dir
        if working_dir and Path(working_dir).is_dir():
            return working_dir
        if working_dir:
            self.log.info("workingDir %s does not exist locally; using %s", working_dir, os.getcwd())
        return None

    def _cgroup(self, limit: int | None) -> Cgroup | None:
        if self.enforcement in {"watchdog", "none"}:
            return None
        # the pod's name in the group's: whose group it is shows in /sys/fs/cgroup (and in tests
        # that share the machine's cgroups with other runs)
        name = f"finetune-{(self.pod.metadata.name or 'pod')[:200]}-{uuid.uuid4().hex[:12]}"
        try:
            group = create_cgroup(name=name, v1_root=self.cgroup_v1_root, v2_root=self.cgroup_v2_root)
        except CgroupUnavailable as exc:
            if self.enforcement == "cgroup":
                raise LocalPodError(str(exc)) from exc
            self.log.warning("%s; enforcing the memory limit with a resident-memory watchdog", exc)
            return None
        if limit is not None:
            try:
                group.set_limit(limit)
            except OSError:
                group.remove()
                raise
        return group

    def _pump(
        self,
        stream: Any,
        label: str,
        tail: deque[str],
        events: dict[str, dict[str, Any]],
    ) -> None:
        """Log each line as it comes (redacted); keep JSON events by name."""
        for raw in iter(stream.readline, b""):
            line = redact(raw.decode("utf-8", errors="replace").rstrip("\n"), self._secrets)
            tail.append(line)
            self.log.info("[%s] %s", label, line)
            event = parse_event_line(line)
            if event is not None:
                events[event["event"]] = event
        stream.close()

    def kill(self) -> None:
        """Kill the container's process tree (Airflow's on_kill)."""
        if self._process is not None and self._process.poll() is None:
            kill_process_group(self._process.pid)


class _ActiveDeadline(threading.Thread):
    """The kubelet's ``activeDeadlineSeconds``: past it, stop the container like a pod deletion.

    Kubernetes marks the pod ``Failed`` with reason ``DeadlineExceeded`` and kills its containers
    with the pod's grace period: SIGTERM first (the runner cancels its query and records the
    failure), SIGKILL when the grace period is over.
    """

    def __init__(
        self,
        pgid: int,
        *,
        seconds: float,
        grace_seconds: float,
        pod_name: str | None,
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        super().__init__(name=f"local-pod-deadline-{pgid}", daemon=True)
        self.pgid = pgid
        self.seconds = seconds
        self.grace_seconds = grace_seconds
        self.pod_name = pod_name
        self.log = log
        self.fired = False
        self._cancelled = threading.Event()

    def run(self) -> None:
        if self._cancelled.wait(self.seconds):
            return
        self.fired = True
        self.log.error(
            "local pod %s: DeadlineExceeded: active longer than its activeDeadlineSeconds (%s s); "
            "stopping the container (SIGTERM, SIGKILL after %s s)",
            self.pod_name,
            self.seconds,
            self.grace_seconds,
        )
        kill_process_group(self.pgid, signal.SIGTERM)
        if not self._cancelled.wait(self.grace_seconds):
            kill_process_group(self.pgid)

    def cancel(self) -> None:
        """The container ended: nothing (more) to stop."""
        self._cancelled.set()


def _grace_seconds(pod: k8s.V1Pod) -> float:
    grace = pod.spec.termination_grace_period_seconds
    # Kubernetes' default terminationGracePeriodSeconds
    return 30.0 if grace is None else float(grace)


def _mask_in_airflow_logs(secret: str) -> None:
    # Register with Airflow's masker too, so that a secret echoed anywhere else in the task
    # (not only our streamed lines) is hidden. Outside Airflow the local redaction suffices.
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:
        return
    mask_secret(secret)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def run_pod_locally(
    pod: k8s.V1Pod,
    *,
    dsn: str | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    **options: Any,
) -> LocalPodResult:
    """Run ``pod``'s base container locally, as a kubelet would run it (see the module docstring).

    :param pod: the V1Pod the KubernetesPodOperator would submit.
    :param dsn: the value of the database Secret; None: resolved from the ``finetune_db``
        connection when the pod references it.
    :param log: the task logger.
    :param options: further :class:`LocalPodRunner` keyword arguments.
    """
    return LocalPodRunner(pod, dsn=dsn, log=log, **options).run()
