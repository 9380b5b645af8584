"""image_test: the engine's container state read as Kubernetes reads it, the pods it plays, its skip.

The whole image test (podman, a built image) is `make image-test`, run by .ci/run; these are its
pieces that need no engine, so that `make test` stays fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

import image_test
from container_engine import Engine, EngineUnavailable
from finetune_sweep.pods.termination import kubernetes_termination
from finetune_sweep.sizing.quantities import parse_quantity
from pod_manifests import build_manifest, make_entry

# What podman 4.3 reports: nanoseconds, Z, and its zero time for a field it never set.
OOM_STATE = {
    "Status": "exited",
    "ExitCode": 137,
    "OOMKilled": True,
    "Error": "",
    "StartedAt": "2026-12-04T11:41:43.902893627Z",
    "FinishedAt": "2026-12-04T11:41:44.758497285Z",
    "CheckpointedAt": "0001-01-01T00:00:00Z",
}
PROFILES_64MI = json.dumps({"STANDARD": {"memory": "64Mi"}})


def _manifest() -> dict[str, Any]:
    """The camelCase manifest of base_features with a 64Mi STANDARD profile, as render prints it."""
    entry = make_entry("base_features")
    entry["container_resources"] = {"requests": {"memory": "64Mi", "cpu": "2"}, "limits": {"memory": "64Mi"}}
    return build_manifest(entry)


@pytest.mark.parametrize(
    ("state", "reason", "exit_code"),
    [
        pytest.param(OOM_STATE, "OOMKilled", 137, id="oom"),
        pytest.param({**OOM_STATE, "OOMKilled": False}, "Error", 137, id="sigkill-not-oom"),
        pytest.param({**OOM_STATE, "OOMKilled": False, "ExitCode": 0}, "Completed", 0, id="completed"),
        pytest.param({**OOM_STATE, "OOMKilled": False, "ExitCode": 2}, "Error", 2, id="error"),
    ],
)
def test_an_exited_container_reads_as_the_kubelet_names_it(state: dict[str, Any], reason: str, exit_code: int) -> None:
    terminated = image_test.container_state(state).terminated

    assert (terminated.reason, terminated.exit_code) == (reason, exit_code)
    assert terminated.started_at == datetime(2026, 12, 4, 11, 41, 43, 902893, tzinfo=UTC)
    assert terminated.finished_at == datetime(2026, 12, 4, 11, 41, 44, 758497, tzinfo=UTC)


def test_a_running_or_created_container_has_no_terminated_state() -> None:
    running = image_test.container_state({"Status": "running", "StartedAt": OOM_STATE["StartedAt"]})
    created = image_test.container_state({"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"})

    assert running.terminated is None and running.running.started_at.year == 2026
    assert created.terminated is None and created.waiting.reason == "ContainerCreating"


def test_the_engines_oom_goes_through_the_kubernetes_classification() -> None:
    pod = image_test.pod_with_state(_manifest(), OOM_STATE)

    termination = kubernetes_termination(pod)
    assert termination.oom_killed and termination.exit_reason == "OOMKilled"
    assert termination.profile == "STANDARD"
    assert termination.memory_limit_bytes == parse_quantity("64Mi")
    assert pod.status.phase == "Failed"


def test_a_sigkill_the_engine_does_not_call_an_oom_is_no_oom() -> None:
    # podman 4.3 started outside the static directory reports this after a real OOM kill: the
    # classification cannot tell, which is why the image test starts containers there.
    termination = kubernetes_termination(image_test.pod_with_state(_manifest(), {**OOM_STATE, "OOMKilled": False}))

    assert not termination.oom_killed and termination.exit_reason == "Error: exit 137"


def test_classify_oom_names_factor_profile_and_limit() -> None:
    played = image_test.Played("finetune-oom", OOM_STATE, log="")

    message = image_test.classify_oom(_manifest(), played, profiles_json=PROFILES_64MI)

    assert message.startswith("factor base_features OOMKilled on profile STANDARD (limit 64.00Mi, peak -)")
    assert "retrying on MEDIUM" in message


def test_classify_oom_fails_on_a_pod_that_was_not_oom_killed() -> None:
    played = image_test.Played("finetune-oom", {**OOM_STATE, "OOMKilled": False}, log="")

    with pytest.raises(image_test.ImageTestFailure, match="not classified as an OOM kill: Error: exit 137"):
        image_test.classify_oom(_manifest(), played, profiles_json=PROFILES_64MI)


def test_with_container_renames_and_replaces_fields_on_a_copy() -> None:
    manifest = _manifest()

    probe = image_test.with_container(manifest, name="probe", command=["python", "-c", "1"], args=None)

    (container,) = probe["spec"]["containers"]
    assert probe["metadata"]["name"] == "probe"
    assert container["command"] == ["python", "-c", "1"] and "args" not in container
    assert manifest["spec"]["containers"][0]["args"][0] == "run"


def test_probe_command_runs_multi_line_code_from_one_line() -> None:
    command = image_test.probe_command("x = 40\nprint(x + 2)\n")

    assert "\n" not in command
    done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "42\n"


def test_database_url_replaces_only_the_database() -> None:
    assert (
        image_test.database_url("postgresql://postgres@127.0.0.1:5432/test?sslmode=disable", "other")
        == "postgresql://postgres@127.0.0.1:5432/other?sslmode=disable"
    )


def test_skips_saying_why_when_no_engine_can_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_engine() -> Engine:
        raise EngineUnavailable("no container engine: install podman")

    monkeypatch.setattr(image_test, "find_engine", no_engine)

    assert image_test.main() == 0
    assert capsys.readouterr().out == "image-test: SKIPPED: no container engine: install podman\n"


def test_skips_on_docker_since_it_plays_the_spec_with_podman(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(image_test, "find_engine", lambda: Engine("docker"))

    assert image_test.main() == 0
    assert "image-test: SKIPPED: it plays the pod spec with podman kube play" in capsys.readouterr().out
