"""The local pod backend with real processes and the machine's real memory cgroups.

The OOM tests allocate a few hundred MiB against a 64Mi limit: the kernel (cgroup) or the
watchdog must kill the process and the outcome must read like a kubelet's ``OOMKilled``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import models as k8s

from finetune_sweep.local.memory import CGROUP_V1_MEMORY_ROOT, CGROUP_V2_ROOT, CgroupUnavailable, create_cgroup
from finetune_sweep.local.pod_runner import LocalPodError, LocalPodResult, LocalPodRunner, run_pod_locally
from finetune_sweep.pods.termination import PodTermination

LOG = logging.getLogger("test.local_pod")
LIMIT = "64Mi"
LIMIT_BYTES = 64 * 2**20
# Touches every page (b"x" * n writes them), so the memory is really resident. The sleep only
# matters when nothing kills the process: the test then fails on its outcome, not on a clock.
ALLOCATE_256MI = "import time; x = b'x' * (256 * 2**20); time.sleep(30)"
# The same, a MiB at a time: a sampling watchdog is sure to see it pass the limit on the way up,
# however busy the machine (a single 256 MiB allocation may complete between two polls).
ALLOCATE_256MI_GRADUALLY = (
    "import time\nchunks = []\nfor _ in range(256):\n    chunks.append(b'x' * 2**20)\n    time.sleep(0.01)\n"
    "time.sleep(30)"
)
ALLOCATE_8MI = "x = b'x' * (8 * 2**20); print('allocated', len(x))"

PASSWORD = "s3cr3t-pw-4711"
CONNECTION = {
    "conn_type": "postgres",
    "host": "db.internal",
    "port": 5432,
    "login": "finetune",
    "password": PASSWORD,
    "schema": "finetune",
}


def _cgroup_available() -> bool:
    try:
        group = create_cgroup(name=f"finetune-probe-{os.getpid()}")
    except CgroupUnavailable:
        return False
    group.remove()
    return True


needs_cgroup = pytest.mark.skipif(not _cgroup_available(), reason="no writable memory cgroup on this machine")


def _groups_of(pod_name: str) -> set[str]:
    # other runs on the machine (other test sessions) create and remove their own groups meanwhile:
    # look only at this pod's (the group's name carries the pod's)
    groups: set[str] = set()
    for root in (CGROUP_V1_MEMORY_ROOT, CGROUP_V2_ROOT):
        if root.is_dir():
            groups |= {p.name for p in root.iterdir() if p.name.startswith(f"finetune-{pod_name}-")}
    return groups


def _make_pod(
    *,
    code: str = "print('hello')",
    memory: str | None = LIMIT,
    env: list[k8s.V1EnvVar] | None = None,
    command: list[str] | None = None,
    args: list[str] | None = None,
) -> k8s.V1Pod:
    resources = k8s.V1ResourceRequirements(
        requests={"memory": memory, "cpu": "1"} if memory else None, limits={"memory": memory} if memory else None
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="finetune-test-pod-abc", namespace="finetune", labels={"app": "t"}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            containers=[
                k8s.V1Container(
                    name="base",
                    image="ghcr.io/finetune-sweep/finetune:0.1.0",
                    command=["python", "-c", code] if command is None else command,
                    args=args,
                    env=env,
                    resources=resources,
                )
            ],
        ),
    )


def _with_deadline(pod: k8s.V1Pod, *, seconds: int, grace: int) -> k8s.V1Pod:
    pod.spec.active_deadline_seconds = seconds
    pod.spec.termination_grace_period_seconds = grace
    return pod


def _secret_env(name: str = "finetune-db", key: str = "url") -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name="FINETUNE_DB_URL",
        value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=name, key=key)),
    )


class _Lines(logging.Handler):
    """Collects the messages of one logger (Airflow's log setup may replace pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.getMessage()))

    @property
    def text(self) -> str:
        return "\n".join(message for _, message in self.records)


@pytest.fixture
def lines() -> Iterator[_Lines]:
    handler = _Lines()
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        LOG.removeHandler(handler)


@needs_cgroup
def test_cgroup_oom_kill_reads_like_kubelet_oomkilled(lines: _Lines) -> None:
    pod = _make_pod(code=ALLOCATE_256MI)
    pod.metadata.name = f"finetune-oom-{uuid.uuid4().hex[:8]}"

    result = run_pod_locally(pod, log=LOG, enforcement="cgroup")

    assert result.reason == "OOMKilled"
    assert result.oom_killed
    assert result.exit_code == 137
    assert result.enforcement in {"cgroup-v1", "cgroup-v2"}
    assert result.memory_limit_bytes == LIMIT_BYTES
    # the kernel kills at the limit: the group's peak is the limit (give or take a page)
    assert result.peak_memory_bytes is not None
    assert result.peak_memory_bytes >= 0.95 * LIMIT_BYTES
    assert _groups_of(pod.metadata.name) == set(), "the cgroup must be removed afterwards"


@pytest.mark.parametrize("enforcement", [pytest.param("auto", id="auto"), pytest.param("watchdog", id="watchdog")])
def test_small_allocation_completes(enforcement: str, lines: _Lines) -> None:
    result = run_pod_locally(_make_pod(code=ALLOCATE_8MI), log=LOG, enforcement=enforcement)

    assert (result.reason, result.exit_code, result.oom_killed) == ("Completed", 0, False)
    assert result.peak_memory_bytes is not None
    assert 8 * 2**20 <= result.peak_memory_bytes < LIMIT_BYTES
    assert "[stdout] allocated 8388608" in lines.text


@pytest.mark.parametrize("enforcement", [pytest.param("auto", id="auto"), pytest.param("watchdog", id="watchdog")])
def test_nonzero_exit_is_error(enforcement: str, lines: _Lines) -> None:
    code = "import sys; print('bad input', file=sys.stderr); sys.exit(3)"

    result = run_pod_locally(_make_pod(code=code), log=LOG, enforcement=enforcement)

    assert (result.reason, result.exit_code, result.oom_killed) == ("Error", 3, False)
    assert "[stderr] bad input" in lines.text
    assert result.log_tail == ("bad input",)


def test_watchdog_kills_past_the_limit(lines: _Lines) -> None:
    result = run_pod_locally(_make_pod(code=ALLOCATE_256MI_GRADUALLY), log=LOG, enforcement="watchdog")

    assert (result.reason, result.exit_code, result.oom_killed) == ("OOMKilled", 137, True)
    assert result.enforcement == "watchdog"
    # killed on the way up: the kernel's peak is past the limit, short of the full allocation
    assert result.peak_memory_bytes is not None
    assert LIMIT_BYTES < result.peak_memory_bytes < 256 * 2**20


def test_watchdog_sees_the_whole_process_tree(lines: _Lines) -> None:
    # the parent stays small; its child allocates: a pod's limit covers every process in it
    code = (
        "import subprocess, sys; "
        "sys.exit(subprocess.call([sys.executable, '-c', \"import time; x = b'x' * (256 * 2**20); time.sleep(30)\"]))"
    )

    result = run_pod_locally(_make_pod(code=code), log=LOG, enforcement="watchdog")

    assert result.reason == "OOMKilled"
    assert result.exit_code == 137


def test_auto_falls_back_to_the_watchdog_without_cgroup(tmp_path: Path, lines: _Lines) -> None:
    result = run_pod_locally(
        _make_pod(code=ALLOCATE_256MI),
        log=LOG,
        cgroup_v1_root=tmp_path / "no-v1",
        cgroup_v2_root=tmp_path / "no-v2",
    )

    assert result.enforcement == "watchdog"
    assert result.reason == "OOMKilled"
    assert "resident-memory watchdog" in lines.text


def test_cgroup_enforcement_required_but_unavailable(tmp_path: Path) -> None:
    runner = LocalPodRunner(
        _make_pod(), enforcement="cgroup", cgroup_v1_root=tmp_path / "x", cgroup_v2_root=tmp_path / "y"
    )
    with pytest.raises(LocalPodError, match="no writable memory cgroup"):
        runner.run()


def test_downward_api_and_literal_env(lines: _Lines) -> None:
    env = [
        k8s.V1EnvVar(name="GREETING", value="hello"),
        k8s.V1EnvVar(name="MESSAGE", value="$(GREETING) world $$(GREETING)"),
        k8s.V1EnvVar(
            name="FINETUNE_MEMORY_LIMIT_BYTES",
            value_from=k8s.V1EnvVarSource(
                resource_field_ref=k8s.V1ResourceFieldSelector(resource="limits.memory", divisor="1")
            ),
        ),
        k8s.V1EnvVar(
            name="LIMIT_MI",
            value_from=k8s.V1EnvVarSource(
                resource_field_ref=k8s.V1ResourceFieldSelector(resource="limits.memory", divisor="1Mi")
            ),
        ),
        k8s.V1EnvVar(
            name="POD_NAME",
            value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")),
        ),
        k8s.V1EnvVar(
            name="POD_NAMESPACE",
            value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.namespace")),
        ),
    ]
    keys = ["MESSAGE", "FINETUNE_MEMORY_LIMIT_BYTES", "LIMIT_MI", "POD_NAME", "POD_NAMESPACE", "HOSTNAME"]
    code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"

    result = run_pod_locally(_make_pod(code=code, env=env), log=LOG)

    assert result.reason == "Completed"
    seen = json.loads(result.log_tail[-1])
    assert seen == {
        "MESSAGE": "hello world $(GREETING)",
        "FINETUNE_MEMORY_LIMIT_BYTES": str(LIMIT_BYTES),
        "LIMIT_MI": "64",
        "POD_NAME": "finetune-test-pod-abc",
        "POD_NAMESPACE": "finetune",
        "HOSTNAME": "finetune-test-pod-abc",
    }


def test_worker_environment_does_not_leak_into_the_container(monkeypatch: pytest.MonkeyPatch, lines: _Lines) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING_ELSE", "postgresql://u:other-secret@h/db")
    code = "import os; print(sorted(k for k in os.environ if k.startswith('AIRFLOW')))"

    result = run_pod_locally(_make_pod(code=code), log=LOG)

    assert result.log_tail[-1] == "[]"


def test_db_secret_resolved_from_airflow_connection_and_never_logged(
    monkeypatch: pytest.MonkeyPatch, lines: _Lines, capfd: pytest.CaptureFixture[str]
) -> None:
    from finetune_sweep.db.dsn import dsn_from_connection

    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", json.dumps(CONNECTION))
    expected = dsn_from_connection("finetune_db")
    assert PASSWORD in expected
    # the container checks it got the DSN, then (carelessly) prints it and a derived message
    code = (
        "import os, sys; dsn = os.environ['FINETUNE_DB_URL']; "
        f"ok = dsn == {expected!r}; "
        "print('connecting to', dsn); print('error: password', dsn.split(':')[2].split('@')[0], 'rejected', "
        "file=sys.stderr); sys.exit(0 if ok else 1)"
    )

    result = run_pod_locally(_make_pod(code=code, env=[_secret_env()]), log=LOG)

    assert result.reason == "Completed", "the container must receive the connection's DSN"
    assert PASSWORD not in lines.text
    assert expected not in lines.text
    assert "connecting to ***" in lines.text
    assert "error: password *** rejected" in lines.text
    assert all(PASSWORD not in line for line in result.log_tail)
    # nor on whatever the log handlers wrote to the terminal
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err


def test_explicit_db_secret_and_dsn(lines: _Lines) -> None:
    dsn = f"postgresql://finetune:{PASSWORD}@db/finetune"
    code = f"import os, sys; sys.exit(0 if os.environ['DB'] == {dsn!r} else 1)"
    env = [
        k8s.V1EnvVar(
            name="DB",
            value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name="finetune-db", key="url")),
        )
    ]

    result = run_pod_locally(_make_pod(code=code, env=env), dsn=dsn, db_secret=("finetune-db", "url"), log=LOG)

    assert result.reason == "Completed"


def test_other_secret_is_refused_clearly() -> None:
    env = [
        _secret_env(),
        k8s.V1EnvVar(
            name="API_TOKEN",
            value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name="exchange", key="token")),
        ),
    ]
    with pytest.raises(LocalPodError, match="secretKeyRef exchange/token: .*only the database Secret"):
        run_pod_locally(_make_pod(env=env), dsn="postgresql://u@h/db")


def test_env_from_is_refused() -> None:
    pod = _make_pod()
    pod.spec.containers[0].env_from = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cm"))]
    with pytest.raises(LocalPodError, match="envFrom"):
        run_pod_locally(pod)


def test_container_without_command_is_refused() -> None:
    with pytest.raises(LocalPodError, match="no command"):
        run_pod_locally(_make_pod(command=[], args=["run"]))


def test_command_and_args_are_passed_with_expansion(lines: _Lines) -> None:
    pod = _make_pod(
        command=["python", "-c", "import sys; print(sys.argv[1:])"],
        args=["run", "--factor", "$(FACTOR)"],
        env=[k8s.V1EnvVar(name="FACTOR", value="btc_features")],
    )

    result = run_pod_locally(pod, log=LOG)

    assert result.log_tail[-1] == "['run', '--factor', 'btc_features']"


def test_json_events_are_parsed(lines: _Lines) -> None:
    usage = {"event": "pod_usage", "run_id": "r", "factor": "f", "peak_memory_bytes": 12345, "seconds": 0.1}
    code = f"import json; print('not json {{'); print(json.dumps({usage!r}))"

    result = run_pod_locally(_make_pod(code=code), log=LOG, enforcement="none")

    assert result.pod_usage == usage
    assert result.enforcement == "none"
    # without cgroup or watchdog, the pod's own report is the peak
    assert result.peak_memory_bytes == 12345


def test_lines_stream_while_the_container_runs(tmp_path: Path, lines: _Lines) -> None:
    # The container prints "first", then waits until the test has *seen* that line in the log
    # (the test answers through a file), and only then prints "second": buffered output would
    # leave it waiting out its 30 s and print "second (never seen)" instead.
    seen = tmp_path / "seen"
    code = (
        "import os, sys, time; print('first'); sys.stdout.flush(); end = time.monotonic() + 30\n"
        f"while not os.path.exists({str(seen)!r}) and time.monotonic() < end: time.sleep(0.02)\n"
        f"print('second' if os.path.exists({str(seen)!r}) else 'second (never seen)')"
    )

    class _Answer(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "[stdout] first":
                seen.touch()

    answer = _Answer()
    LOG.addHandler(answer)
    try:
        run_pod_locally(_make_pod(code=code), log=LOG)
    finally:
        LOG.removeHandler(answer)

    stdout = [message for _, message in lines.records if message.startswith("[stdout]")]
    assert stdout == ["[stdout] first", "[stdout] second"]


def test_kill_takes_the_container_down(lines: _Lines) -> None:
    code = "import sys, time; print('started'); sys.stdout.flush(); time.sleep(30)"
    runner = LocalPodRunner(_make_pod(code=code), log=LOG)
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(runner.run()))
    thread.start()
    # kill once the container is surely running (its first line arrived), not after a guess
    for _ in range(3000):
        if "[stdout] started" in lines.text:
            break
        time.sleep(0.01)
    runner.kill()
    thread.join(timeout=30)

    assert results and results[0].exit_code == 137
    assert results[0].reason == "Error"  # a kill is not an OOM


def test_no_memory_limit_runs_unlimited(lines: _Lines) -> None:
    code = "import os; print(os.environ['LIMIT'])"
    env = [
        k8s.V1EnvVar(
            name="LIMIT",
            value_from=k8s.V1EnvVarSource(resource_field_ref=k8s.V1ResourceFieldSelector(resource="limits.memory")),
        )
    ]

    result = run_pod_locally(_make_pod(code=code, memory=None, env=env), log=LOG)

    assert result.reason == "Completed"
    assert result.memory_limit_bytes is None
    # the downward API reports the node's memory when a container has no limit
    assert int(result.log_tail[-1]) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# A container that hangs: it would sleep far longer than any test runs.
HANG = "import sys, time; print('working', flush=True); time.sleep(600)"
# One that also ignores SIGTERM (a process stuck where no handler runs): only SIGKILL ends it.
HANG_IGNORING_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('working', flush=True); time.sleep(600)"
)


@pytest.mark.parametrize("enforcement", [pytest.param("auto", id="auto"), pytest.param("watchdog", id="watchdog")])
def test_active_deadline_stops_a_hung_container_like_kubernetes(enforcement: str, lines: _Lines) -> None:
    pod = _with_deadline(_make_pod(code=HANG), seconds=1, grace=30)

    result = run_pod_locally(pod, log=LOG, enforcement=enforcement)

    # SIGTERM first (the runner may cancel its query and record the failure): exit 128 + 15
    assert (result.reason, result.exit_code, result.oom_killed) == ("DeadlineExceeded", 143, False)
    assert result.message is not None and "activeDeadlineSeconds 1" in result.message
    assert not result.succeeded
    deadline_lines = [message for _, message in lines.records if "DeadlineExceeded" in message]
    assert deadline_lines[0] == (
        "local pod finetune-test-pod-abc: DeadlineExceeded: active longer than its activeDeadlineSeconds (1 s); "
        "stopping the container (SIGTERM, SIGKILL after 30.0 s)"
    )


def test_active_deadline_kills_after_the_grace_period(lines: _Lines) -> None:
    pod = _with_deadline(_make_pod(code=HANG_IGNORING_SIGTERM), seconds=1, grace=1)

    result = run_pod_locally(pod, log=LOG)

    assert (result.reason, result.exit_code) == ("DeadlineExceeded", 137)


def test_no_deadline_when_the_container_finishes_first(lines: _Lines) -> None:
    pod = _with_deadline(_make_pod(code="print('done')"), seconds=300, grace=1)

    result = run_pod_locally(pod, log=LOG)

    assert (result.reason, result.exit_code, result.message) == ("Completed", 0, None)
    assert "DeadlineExceeded" not in lines.text


def test_the_pods_exit_2_line_reaches_the_task_log(migrated_db: str, lines: _Lines) -> None:
    # params that cannot fit the data, where plan cannot know the data's length (e.g. a file
    # URI): the pod refuses them with one line, and that line is in the task log and the result
    args = [
        "run",
        "--run-id",
        "r",
        "--factor",
        "base_features",
        "--cryptos",
        "BTC",
        "--cost-bps",
        "10",
        "--slippage-bps",
        "0",
        "--as-of",
        "2026-06-07T00:00:00Z",
        "--n-folds",
        "24",
        "--n-seeds",
        "10",
        "--hold-bars",
        "24",
        "--train-bars",
        "4320",
        "--test-bars",
        "8760",
    ]
    pod = _make_pod(command=["python", "-m", "finetune"], args=args, memory=None, env=[_secret_env()])

    result = run_pod_locally(pod, dsn=migrated_db, log=LOG, enforcement="none")

    assert (result.reason, result.exit_code) == ("Error", 2)
    stderr = [message for _, message in lines.records if message.startswith("[stderr] ")]
    assert len(stderr) == 1, stderr
    assert "fold 0 of 24" in stderr[0] and "214584 bars" in stderr[0]
    assert result.log_tail[-1] == stderr[0].removeprefix("[stderr] ")


# --------------------------------------------------------------------------- the result as a PodTermination

DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def _make_result(**overrides: Any) -> LocalPodResult:
    fields: dict[str, Any] = {
        "exit_code": 0,
        "oom_killed": False,
        "peak_memory_bytes": 20 * 2**20,
        "memory_limit_bytes": LIMIT_BYTES,
        "seconds": 3.25,
        "reason": "Completed",
        "enforcement": "watchdog",
    }
    fields.update(overrides)
    return LocalPodResult(**fields)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            _make_result(),
            PodTermination("Completed", 0, False, LIMIT_BYTES, 20 * 2**20, seconds=3.25, detail=None),
            id="succeeded",
        ),
        pytest.param(
            _make_result(
                exit_code=137,
                oom_killed=True,
                peak_memory_bytes=LIMIT_BYTES + 2**20,
                reason="OOMKilled",
                log_tail=("allocating", "still allocating"),
            ),
            PodTermination(
                "OOMKilled", 137, True, LIMIT_BYTES, LIMIT_BYTES + 2**20, seconds=3.25, detail="still allocating"
            ),
            id="oom-killed",
        ),
        pytest.param(
            # the pod's status message wins over what it printed last
            _make_result(
                exit_code=143,
                peak_memory_bytes=None,
                seconds=30.0,
                reason="DeadlineExceeded",
                message=DEADLINE_MESSAGE,
                log_tail=("working on fold 3",),
            ),
            PodTermination("DeadlineExceeded", 143, False, LIMIT_BYTES, None, seconds=30.0, detail=DEADLINE_MESSAGE),
            id="deadline-exceeded",
        ),
        pytest.param(
            _make_result(
                exit_code=1,
                memory_limit_bytes=None,
                reason="Error",
                events={"run_error": {"event": "run_error", "error": "database unreachable"}},
                log_tail=("Traceback ...", "psycopg.OperationalError: ..."),
            ),
            PodTermination("Error", 1, False, None, 20 * 2**20, seconds=3.25, detail="database unreachable"),
            id="error-with-its-run-error-event",
        ),
        pytest.param(
            _make_result(exit_code=2, reason="Error", log_tail=("finetune: error: unknown factor 'x'", "usage: ...")),
            PodTermination(
                "Error", 2, False, LIMIT_BYTES, 20 * 2**20, seconds=3.25, detail="finetune: error: unknown factor 'x'"
            ),
            id="refusal-of-bad-input",
        ),
    ],
)
def test_termination_maps_the_result(result: LocalPodResult, expected: PodTermination) -> None:
    assert result.termination() == expected


@pytest.mark.parametrize(
    ("result", "exit_reason", "recorded_reason"),
    [
        pytest.param(
            _make_result(exit_code=137, oom_killed=True, reason="OOMKilled", log_tail=("allocating",)),
            "OOMKilled",
            "OOMKilled",
            id="oom-killed",
        ),
        pytest.param(
            _make_result(exit_code=143, reason="DeadlineExceeded", message=DEADLINE_MESSAGE),
            "DeadlineExceeded",
            f"DeadlineExceeded: {DEADLINE_MESSAGE}",
            id="deadline-exceeded",
        ),
        pytest.param(
            _make_result(exit_code=3, reason="Error", log_tail=("boom",)),
            "Error: exit 3",
            "Error: exit 3: boom",
            id="error",
        ),
    ],
)
def test_termination_reads_like_a_kubernetes_pod_end(
    result: LocalPodResult, exit_reason: str, recorded_reason: str
) -> None:
    termination = result.termination()

    assert (termination.exit_reason, termination.recorded_reason) == (exit_reason, recorded_reason)
    # the local backend never reports a cluster disruption, nor the pod's labels
    assert (termination.disrupted, termination.profile, termination.attempt) == (False, None, None)
