"""`make image-test`: the pod image run by a real container engine, from the pod spec ``render`` prints.

Steps (each printed with its time, then the total):

1. the engine: podman, set up by ``container_engine`` (runc, ulimits); none that can run here
   means the test is SKIPPED, saying why (exit 0, the word SKIPPED on the terminal);
2. ``make image`` (``scripts/image_build.py``): the base from the registry or debootstrap;
3. a fresh database on the CI PostgreSQL (``FINETUNE_TEST_ADMIN_URL``, as the tests use), its DSN
   in a podman secret named as the spec's ``secretKeyRef`` (``FINETUNE_DB_SECRET``);
4. ``python -m finetune_sweep render`` of one factor for the built image, played with
   ``podman kube play --network host`` (a loopback PostgreSQL is reachable): ``migrate`` first
   (the same pod, the DAG's ``migrate`` arguments), the run registered as ``register`` does, then
   the factor's pod; its rows and baselines land and the gate query (``GATE_SQL``) passes;
5. a probe with the same spec (its command replaced): uid 10001, a write to ``/`` fails, no
   capabilities, no privilege escalation, HOME writable only where the spec mounts a volume;
6. the same pod rendered with a 64Mi STANDARD profile (``FINETUNE_PROFILES``): exit 137 and
   OOMKilled; the engine's container state, turned into the Kubernetes ``V1ContainerState`` shape,
   goes through the project's own classification (``kubernetes_termination``, ``ladder_step``),
   which must name OOMKilled with the factor, the profile and the limit.

The OOM truth of podman 4.3: conmon writes its ``oom`` marker into its *working directory* and
podman reads it from the container's static directory (``StaticDir``) only, so a container
started anywhere else reports ``OOMKilled: false`` after an OOM kill (and leaves an ``oom`` file in
the caller's folder). Each pod is therefore created with ``kube play --start=false`` and its
container started by ``podman start`` run *in its own static directory*; podman then reports the
kernel's verdict itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "plugins")]

from container_engine import CACHE_DIR, Engine, EngineError, EngineUnavailable, Steps, fail, find_engine  # noqa: E402
from image_build import build_image  # noqa: E402

FACTOR = "base_features"
RUN_ID = "manual__2026-06-07T00:00:00+00:00"
AS_OF = "2026-06-07T00:00:00Z"
OOM_LIMIT = "64Mi"
# the engine's MB, as `podman images` shows them: 422 MB before the profit test's bootstrap brought
# scipy (110 MB) and arch with statsmodels (45 MB, imported by arch's package itself) in: 583 MB
MAX_IMAGE_BYTES = 650 * 10**6
IMAGE_USER = "10001:10001"
ADMIN_URL = os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
POD_TIMEOUT_SECONDS = 300
# What the probe reports from inside the container, as one JSON line.
PROBE = r"""
import json, os
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as handle:
            handle.write("x")
        os.remove(os.path.join(path, ".probe"))
        return True
    except OSError:
        return False
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME"),
    "writable": {path: writable(path) for path in ("/", "/app", "/opt/venv", "/etc", os.environ["HOME"])},
    "caps": {key: int(status[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "no_new_privs": int(status["NoNewPrivs"]),
    "seccomp": int(status["Seccomp"]),
    "memory_limit": os.environ.get("FINETUNE_MEMORY_LIMIT_BYTES"),
}))
"""


def probe_command(code: str) -> str:
    """``python -c`` text running ``code``: base64 on one line, since podman 4.3's kube play fails
    to parse a multi-line string in a container's command ("did not find expected '-' indicator")."""
    return f"import base64; exec(base64.b64decode('{base64.b64encode(code.encode()).decode()}'))"


class ImageTestFailure(AssertionError):
    """A check of the image test failed; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    """Fail the image test with ``message`` unless ``condition``."""
    if not condition:
        raise ImageTestFailure(message)


# --------------------------------------------------------------------------- engine state -> Kubernetes


def _timestamp(text: str | None) -> datetime | None:
    """podman's RFC 3339 time (nanoseconds) as a datetime; None for its zero time or nothing."""
    if not text or text.startswith("0001-01-01"):
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(trimmed)


def container_state(state: Mapping[str, Any]) -> Any:
    """The engine's container state (``podman inspect``'s ``State``) as a Kubernetes ``V1ContainerState``.

    The reasons are the kubelet's: ``OOMKilled`` when the engine says the memory limit killed it,
    else ``Completed`` for exit 0 and ``Error`` for any other exit.

    :param state: ``{"Status": "exited", "ExitCode": 137, "OOMKilled": true, "StartedAt": ..., ...}``.
    """
    from kubernetes.client import models as k8s

    status = state.get("Status")
    if status in ("exited", "stopped"):
        exit_code = int(state.get("ExitCode", 0))
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if exit_code == 0 else "Error")
        return k8s.V1ContainerState(
            terminated=k8s.V1ContainerStateTerminated(
                exit_code=exit_code,
                reason=reason,
                message=state.get("Error") or None,
                started_at=_timestamp(state.get("StartedAt")),
                finished_at=_timestamp(state.get("FinishedAt")),
            )
        )
    if status == "running":
        return k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(started_at=_timestamp(state.get("StartedAt"))))
    return k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"))


def pod_with_state(manifest: Mapping[str, Any], state: Mapping[str, Any], *, container: str = "base") -> Any:
    """The rendered pod as the API server would return it after the engine ran it: a ``V1Pod``
    with the container's status from :func:`container_state`.

    :param manifest: the camelCase manifest ``render`` printed.
    :param state: the engine's ``State`` of the pod's container.
    :param container: the container's name in the spec.
    """
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s

    # The client's own deserializer turns camelCase JSON into the models (as spec.py does).
    pod = ApiClient()._ApiClient__deserialize(dict(manifest), "V1Pod")  # type: ignore[attr-defined]
    k8s_state = container_state(state)
    (spec_container,) = [c for c in pod.spec.containers if c.name == container]
    terminated = k8s_state.terminated
    phase = "Running" if terminated is None else ("Succeeded" if terminated.exit_code == 0 else "Failed")
    pod.status = k8s.V1PodStatus(
        phase=phase,
        container_statuses=[
            k8s.V1ContainerStatus(
                name=container,
                image=spec_container.image,
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s_state,
            )
        ],
    )
    return pod


# --------------------------------------------------------------------------- manifests


def with_container(manifest: Mapping[str, Any], *, name: str, **fields: Any) -> dict[str, Any]:
    """A copy of ``manifest`` renamed ``name``, its base container's ``fields`` replaced (camelCase
    keys; None removes a field).

    :param manifest: the rendered pod.
    :param name: the pod's new name (each play needs its own).
    """
    copied = json.loads(json.dumps(manifest))
    copied["metadata"]["name"] = name
    (container,) = [c for c in copied["spec"]["containers"] if c["name"] == "base"]
    for key, value in fields.items():
        if value is None:
            container.pop(key, None)
        else:
            container[key] = value
    return copied


@dataclass(frozen=True)
class Played:
    """A pod the engine ran to its end: its container's state and log."""

    name: str
    state: dict[str, Any]
    log: str

    @property
    def exit_code(self) -> int:
        return int(self.state["ExitCode"])

    def events(self) -> dict[str, dict[str, Any]]:
        """The pod's JSON events by name (the last of each)."""
        from finetune_sweep.pods.termination import parse_pod_log

        return parse_pod_log(self.log.splitlines())[0]


class Pods:
    """Pods played with ``podman kube play``, removed again by :meth:`remove_all`."""

    def __init__(self, engine: Engine, folder: Path) -> None:
        self.engine = engine
        self.folder = folder
        self.names: list[str] = []

    def play(self, manifest: Mapping[str, Any]) -> Played:
        """Create the pod, start its container in its static directory (the OOM truth, see the
        module docstring), wait for its end and read its state and log.

        :param manifest: the pod (camelCase; JSON is YAML).
        """
        name = manifest["metadata"]["name"]
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps(manifest, indent=2))
        self.names.append(name)
        self.engine.run(["kube", "play", "--start=false", "--network", "host", str(path)])
        container = f"{name}-base"
        static_dir = self.engine.run(["container", "inspect", "--format", "{{.StaticDir}}", container]).stdout.strip()
        self.engine.run(["start", container], cwd=Path(static_dir))
        self.engine.run(["wait", container], timeout=POD_TIMEOUT_SECONDS)
        (inspected,) = json.loads(self.engine.run(["container", "inspect", container]).stdout)
        log = self.engine.run(["logs", container]).stdout
        return Played(name, inspected["State"], log)

    def remove_all(self) -> None:
        for name in self.names:
            self.engine.run(["pod", "rm", "--force", name], check=False)


# --------------------------------------------------------------------------- the steps


def render(factor: str, *envs: Mapping[str, str]) -> list[dict[str, Any]]:
    """``python -m finetune_sweep render`` of ``factor`` as JSON, once per env (on top of ours).

    The renders run side by side: each spends its time importing Airflow. This machine sets
    PYTHONDONTWRITEBYTECODE=1, so the venv never gets bytecode and every render compiled ~3,500
    modules again (10 s of CPU); the renders may write it (into .venv, as Python normally does).
    """
    command = [sys.executable, "-m", "finetune_sweep", "render", "--factor", factor, "--run-id", RUN_ID]
    command += ["--as-of", AS_OF, "--output", "json"]
    base_env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**base_env, **env})
        for env in envs
    ]
    manifests = []
    for process in running:
        out, err = process.communicate(timeout=300)
        if process.returncode != 0:
            raise ImageTestFailure(f"render failed (exit {process.returncode}): {err.strip()[-500:]}")
        manifests.append(json.loads(out))
    return manifests


def database_url(admin_url: str, database: str) -> str:
    """``admin_url`` pointing at ``database`` instead."""
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + database
    return f"{base}?{query}" if query else base


def register(dsn: str, manifest_env: Mapping[str, str], *, factor: str) -> None:
    """Register the run as the DAG's ``register`` task does (the gate reads the manifest)."""
    from finetune_sweep.db.runs import register_run
    from finetune_sweep.sweep.params import STRATEGY, default_params, validate_params
    from finetune_sweep.sweep.plan import plan_pods

    params = validate_params({**default_params(), "factors": [factor]})
    entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF, profiles_json=manifest_env.get("FINETUNE_PROFILES"))
    register_run(
        dsn,
        run_id=RUN_ID,
        dag_id="finetune_sweep",
        as_of=AS_OF,
        params={**params, "data_uri": None},
        strategy=STRATEGY,
        entries=entries,
    )


def gate_and_counts(dsn: str, *, factor: str) -> tuple[tuple[bool, int, list[str]], int, int]:
    """The gate's verdict for the run, and the factor's model and baseline row counts."""
    import psycopg

    from finetune_sweep.gate import GATE_SQL

    with psycopg.connect(dsn) as conn:
        ok, n_problems, problems = conn.execute(GATE_SQL, {"run_id": RUN_ID}).fetchone()
        models = conn.execute(
            "SELECT count(*) FROM finetune_results WHERE run_id = %s AND factor = %s", (RUN_ID, factor)
        ).fetchone()[0]
        baselines = conn.execute(
            "SELECT count(*) FROM finetune_baselines WHERE run_id = %s AND factor = %s", (RUN_ID, factor)
        ).fetchone()[0]
    return (ok, n_problems, list(problems or [])), models, baselines


def classify_oom(manifest: Mapping[str, Any], played: Played, *, profiles_json: str) -> str:
    """The project's words for the pod's end: ``kubernetes_termination`` of the engine's state,
    then the ladder's message (what the operator raises).

    :param manifest: the rendered pod.
    :param played: its run.
    :param profiles_json: the ``FINETUNE_PROFILES`` it was rendered with.
    """
    from finetune_sweep.operators.ladder import LadderState, ladder_step
    from finetune_sweep.pods.termination import kubernetes_termination
    from finetune_sweep.sizing.profiles import PROFILE_ORDER, load_profiles

    termination = kubernetes_termination(pod_with_state(manifest, played.state))
    check(termination.oom_killed, f"not classified as an OOM kill: {termination.exit_reason}")
    check(termination.exit_reason == "OOMKilled", f"exit reason {termination.exit_reason!r}, not OOMKilled")
    profiles = load_profiles(profiles_json)
    profile = profiles[termination.profile]
    higher_names = PROFILE_ORDER[PROFILE_ORDER.index(profile.name) + 1 :]
    step = ladder_step(
        termination,
        factor=manifest["metadata"]["labels"]["finetune/factor"],
        profile=profile,
        higher=profiles[higher_names[0]] if higher_names else None,
        attempt=1,
        limit=termination.memory_limit_bytes,
        state=LadderState(1),
        disruption_retries=0,
    )
    return step.message


def run(engine: Engine, steps: Steps, *, base_choice: str) -> None:
    """All the steps; raises :class:`ImageTestFailure` (or an engine error) at the first failed check."""
    import psycopg

    from finetune_sweep.settings import get_settings
    from finetune_sweep.sizing.quantities import format_bytes, parse_quantity

    image = get_settings().image
    build_image(engine, steps, choice=base_choice, tag=image)
    with steps.step("the image: size, default user, --help with no writable home"):
        size = int(engine.run(["image", "inspect", "--format", "{{.Size}}", image]).stdout.strip())
        user = engine.run(["image", "inspect", "--format", "{{.Config.User}}", image]).stdout.strip()
        print(f"image-test: {image} is {size / 1e6:.0f} MB, user {user}")
        check(size <= MAX_IMAGE_BYTES, f"the image is {size / 1e6:.0f} MB, over {MAX_IMAGE_BYTES / 1e6:.0f} MB")
        check(user == IMAGE_USER, f"the image's default user is {user!r}, not {IMAGE_USER}")
        # no spec, no volume: the image's own user and HOME (/nonexistent), a read-only root
        helped = engine.run(["run", "--rm", "--read-only", "--network", "none", image, "--help"], check=False)
        check(
            helped.returncode == 0 and helped.stdout.startswith("usage: finetune"),
            f"--help exited {helped.returncode}: {(helped.stderr or helped.stdout)[-300:]}",
        )

    token = uuid.uuid4().hex[:8]
    database = f"finetune_image_test_{token}"
    secret = f"finetune-db-image-test-{token}"
    dsn = database_url(ADMIN_URL, database)
    folder = CACHE_DIR / "pods" / token  # the manifests played
    folder.mkdir(parents=True, exist_ok=True)
    pods = Pods(engine, folder)
    volume_existed = engine.run(["volume", "exists", "tmp"], check=False).returncode == 0
    env = {"FINETUNE_IMAGE": image, "FINETUNE_DB_SECRET": secret}
    oom_profiles = json.dumps({"STANDARD": {"memory": OOM_LIMIT}})
    try:
        with steps.step(f"database {database} and podman secret {secret}"):
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            # kube play reads a secretKeyRef from a podman secret holding {"key": base64(value)}
            key = get_settings().db_secret_key
            payload = json.dumps({key: base64.b64encode(dsn.encode()).decode()})
            engine.run(["secret", "create", secret, "-"], input=payload)

        with steps.step(f"render {FACTOR} (python -m finetune_sweep render) x2: {OOM_LIMIT} STANDARD too"):
            manifest, oom_manifest = render(FACTOR, env, {**env, "FINETUNE_PROFILES": oom_profiles})
            (container,) = manifest["spec"]["containers"]
            check(container["image"] == image, f"render printed {container['image']}, the build tagged {image}")
            limit = oom_manifest["spec"]["containers"][0]["resources"]["limits"]["memory"]
            check(limit == OOM_LIMIT, f"the OOM pod renders with limit {limit}")

        with steps.step("kube play: migrate"):
            migrated = pods.play(with_container(manifest, name=f"finetune-migrate-{token}", args=["migrate"]))
            check(migrated.exit_code == 0, f"migrate exited {migrated.exit_code}: {migrated.log[-500:]}")
            check("migrate_finished" in migrated.events(), f"migrate said no migrate_finished: {migrated.log[-500:]}")
            register(dsn, env, factor=FACTOR)

        with steps.step(f"kube play: run {FACTOR}; rows, baselines and the gate"):
            ran = pods.play(with_container(manifest, name=f"{manifest['metadata']['name']}-{token}"))
            check(ran.exit_code == 0, f"the factor pod exited {ran.exit_code}: {ran.log[-800:]}")
            usage = ran.events().get("pod_usage") or {}
            limit_bytes = 8 * 2**30
            check(
                usage.get("memory_limit_bytes") == limit_bytes,
                f"the pod saw limit {usage.get('memory_limit_bytes')} (resourceFieldRef), not {limit_bytes}",
            )
            (ok, n_problems, problems), models, baselines = gate_and_counts(dsn, factor=FACTOR)
            check(models > 0 and baselines == 3 * models, f"{models} model rows, {baselines} baselines")
            check(ok is True and n_problems == 0, f"the gate failed with {n_problems} problems: {problems[:5]}")
            print(
                f"image-test: {models} model rows, {baselines} baselines; gate ok (peak {usage.get('peak_memory_bytes')} B)"
            )

        with steps.step("kube play: probe inside the container (uid, read-only root, capabilities, HOME)"):
            probed = pods.play(
                with_container(
                    manifest, name=f"finetune-probe-{token}", command=["python", "-c", probe_command(PROBE)], args=None
                )
            )
            check(probed.exit_code == 0, f"the probe exited {probed.exit_code}: {probed.log[-800:]}")
            seen = json.loads(probed.log.strip().splitlines()[-1])
            print(f"image-test: inside: {json.dumps(seen, sort_keys=True)}")
            check((seen["uid"], seen["gid"]) == (10001, 10001), f"runs as {seen['uid']}:{seen['gid']}, not 10001")
            check(seen["home"] == "/tmp", f"HOME is {seen['home']}")
            expected = {"/": False, "/app": False, "/opt/venv": False, "/etc": False, "/tmp": True}
            check(seen["writable"] == expected, f"writable paths {seen['writable']}, expected {expected}")
            check(not any(seen["caps"].values()), f"capabilities left: {seen['caps']}")
            check(seen["no_new_privs"] == 1, "privilege escalation is possible (NoNewPrivs 0)")
            # 2: a seccomp filter; podman's own default profile, not the spec's (see the README)
            check(seen["seccomp"] == 2, f"no seccomp filter (Seccomp {seen['seccomp']})")

        with steps.step(f"kube play: run {FACTOR} at {OOM_LIMIT}; OOMKilled, classified"):
            oomed = pods.play(with_container(oom_manifest, name=f"finetune-oom-{token}"))
            check(oomed.exit_code == 137, f"the {OOM_LIMIT} pod exited {oomed.exit_code}, not 137: {oomed.log[-500:]}")
            check(oomed.state.get("OOMKilled") is True, f"podman says OOMKilled={oomed.state.get('OOMKilled')}")
            message = classify_oom(oom_manifest, oomed, profiles_json=oom_profiles)
            limit_text = format_bytes(parse_quantity(OOM_LIMIT))
            for part in (f"factor {FACTOR}", "OOMKilled", "profile STANDARD", f"limit {limit_text}"):
                check(part in message, f"the classification does not name {part!r}: {message}")
            print(f"image-test: classified: {message}")
    finally:
        pods.remove_all()
        if not volume_existed:
            engine.run(["volume", "rm", "--force", "tmp"], check=False)
        engine.run(["secret", "rm", secret], check=False)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    # the played manifests stay for a failed run only (to replay one by hand)
    shutil.rmtree(folder)


def main() -> int:
    """Run the image test; exit 0 when it passed or was skipped (SKIPPED printed), 1 when it failed."""
    steps = Steps("image-test")
    try:
        engine = find_engine()
    except EngineUnavailable as err:
        print(f"image-test: SKIPPED: {err}")
        return 0
    if engine.name != "podman":
        print(f"image-test: SKIPPED: it plays the pod spec with podman kube play; this machine has {engine.name}")
        return 0
    try:
        run(engine, steps, base_choice=os.environ.get("FINETUNE_BASE_IMAGE", "").strip() or "auto")
    except (ImageTestFailure, EngineError, subprocess.TimeoutExpired) as err:
        print(f"image-test: FAILED after {steps.total():.1f} s")
        return fail(str(err))
    print(f"image-test: passed in {steps.total():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
