"""The OOM ladder: the profile a try runs on, where a round of tries starts, and the ladder as the
operator applies it (the pod sized for the try's profile, the round's OOMs and disruptions kept in
the task state store, an OOM moving the retry up, a disruption keeping its profile)."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from factor_pods import (
    TaskStateStore,
    complete,
    container_env,
    make_context,
    make_k8s_operator,
    make_operator,
    oom_kill,
    recorded_attempts,
    recorded_manifest,
    store_with_ooms,
)
from fake_kube import FakeCoreV1Api, set_disrupted
from finetune_sweep.operators.factor_pod import PodDisrupted, PodFailed, PodOOMKilled
from finetune_sweep.operators.ladder import (
    LADDER_STATE_KEY,
    LadderState,
    LadderStep,
    attempt_profile,
    ladder_step,
    round_start,
)
from finetune_sweep.pods import spec as pods
from finetune_sweep.pods.termination import PodTermination
from finetune_sweep.sizing.profiles import PROFILES

GI = 2**30


@pytest.mark.parametrize(
    ("planned", "try_number", "expected"),
    [
        pytest.param("STANDARD", 1, "STANDARD", id="standard-try1"),
        pytest.param("STANDARD", 2, "MEDIUM", id="standard-try2"),
        pytest.param("STANDARD", 3, "HEAVY", id="standard-try3"),
        pytest.param("STANDARD", 4, "HEAVY", id="capped-at-top"),
        pytest.param("MEDIUM", 2, "HEAVY", id="medium-try2"),
        pytest.param("HEAVY", 1, "HEAVY", id="heavy-try1"),
    ],
)
def test_attempt_profile(planned: str, try_number: int, expected: str) -> None:
    assert attempt_profile(planned, try_number=try_number, profiles=PROFILES).name == expected


@pytest.mark.parametrize(
    ("max_tries", "expected"),
    [
        pytest.param(2, 1, id="first-round"),
        # Cleared after try 3 failed: Airflow sets max_tries = 3 + retries; try 4 starts a round.
        pytest.param(5, 4, id="cleared"),
        pytest.param(None, 1, id="unknown"),
    ],
)
def test_round_start(max_tries: int | None, expected: int) -> None:
    assert round_start(max_tries=max_tries, retries=2) == expected


def test_attempt_profile_unknown_profile_fails() -> None:
    with pytest.raises(AirflowFailException, match="unknown profile 'HUGE'; known profiles: STANDARD"):
        attempt_profile("HUGE", try_number=1, profiles=PROFILES)


# --------------------------------------------------------------------------- one step of the ladder


def _termination(**overrides: object) -> PodTermination:
    fields = {
        "reason": "Error",
        "exit_code": 1,
        "oom_killed": False,
        "memory_limit_bytes": 8 * GI,
        "peak_memory_bytes": None,
    }
    fields.update(overrides)
    return PodTermination(**fields)


def _step(termination: PodTermination, *, profile: str, state: LadderState, retries: int = 2) -> LadderStep:
    ran_on = PROFILES[profile]
    return ladder_step(
        termination,
        factor="base_features",
        profile=ran_on,
        higher={"STANDARD": PROFILES["MEDIUM"], "MEDIUM": PROFILES["HEAVY"]}.get(profile),
        attempt=3,
        limit=ran_on.memory_bytes,
        state=state,
        disruption_retries=retries,
    )


OOM = {"reason": "OOMKilled", "exit_code": 137, "oom_killed": True}
PREEMPTED = {
    "reason": "PreemptionByScheduler",
    "exit_code": 137,
    "disrupted": True,
    "detail": "default-scheduler: preempting",
}


@pytest.mark.parametrize(
    ("termination", "profile", "state", "retries", "expected"),
    [
        pytest.param(
            _termination(**OOM, peak_memory_bytes=GI * 15 // 2),
            "STANDARD",
            LadderState(1, ooms=0, disruptions=1),
            2,
            LadderStep(
                "oom",
                "factor base_features OOMKilled on profile STANDARD (limit 8.00Gi, peak 7.50Gi); "
                "retrying on MEDIUM (16.00Gi)",
                LadderState(1, ooms=1, disruptions=1),
            ),
            id="oom-below-the-top",
        ),
        pytest.param(
            _termination(**OOM),
            "MEDIUM",
            LadderState(4, ooms=1),
            2,
            LadderStep(
                "oom",
                "factor base_features OOMKilled on profile MEDIUM (limit 16.00Gi, peak -); retrying on HEAVY (24.00Gi)",
                LadderState(4, ooms=2),
            ),
            id="oom-peak-unknown-keeps-the-round",
        ),
        pytest.param(
            _termination(**OOM, peak_memory_bytes=24 * GI),
            "HEAVY",
            LadderState(1, ooms=2),
            2,
            LadderStep(
                "failed",
                "factor base_features OOMKilled on profile HEAVY (limit 24.00Gi, peak 24.00Gi); already at the "
                "largest profile HEAVY: raise its memory (FINETUNE_PROFILES) or split the factor",
            ),
            id="oom-at-the-top",
        ),
        pytest.param(
            # an OOM kill on a pod the cluster also marked: the OOM decides
            _termination(**OOM, disrupted=True),
            "STANDARD",
            LadderState(1),
            2,
            LadderStep(
                "oom",
                "factor base_features OOMKilled on profile STANDARD (limit 8.00Gi, peak -); "
                "retrying on MEDIUM (16.00Gi)",
                LadderState(1, ooms=1),
            ),
            id="oom-wins-over-disruption",
        ),
        pytest.param(
            _termination(**PREEMPTED),
            "MEDIUM",
            LadderState(1, ooms=1, disruptions=1),
            2,
            LadderStep(
                "disrupted",
                "factor base_features: the cluster disrupted its pod on profile MEDIUM: PreemptionByScheduler "
                "(default-scheduler: preempting); retrying on the same profile (disruption 2 of 2 allowed)",
                LadderState(1, ooms=1, disruptions=2),
            ),
            id="disruption-within-the-budget",
        ),
        pytest.param(
            _termination(**PREEMPTED),
            "MEDIUM",
            LadderState(1, ooms=1, disruptions=2),
            2,
            LadderStep(
                "failed",
                "factor base_features: the cluster disrupted its pod on profile MEDIUM: PreemptionByScheduler "
                "(default-scheduler: preempting); 2 disruption retries used up (FINETUNE_DISRUPTION_RETRIES)",
            ),
            id="disruption-beyond-the-budget",
        ),
        pytest.param(
            _termination(reason="Evicted", exit_code=None, disrupted=True),
            "STANDARD",
            LadderState(1),
            0,
            LadderStep(
                "failed",
                "factor base_features: the cluster disrupted its pod on profile STANDARD: Evicted; "
                "0 disruption retries used up (FINETUNE_DISRUPTION_RETRIES)",
            ),
            id="no-disruption-budget",
        ),
        pytest.param(
            _termination(detail="finetune: error: unknown crypto 'XYZ'"),
            "STANDARD",
            LadderState(1),
            2,
            LadderStep(
                "failed",
                "factor base_features failed on profile STANDARD (attempt 3): Error: exit 1 "
                "(finetune: error: unknown crypto 'XYZ'); not retried (only an OOM moves a factor up)",
            ),
            id="another-failure",
        ),
        pytest.param(
            # SIGKILLed far below its limit: not an OOM, and not retried one profile up
            _termination(exit_code=137, peak_memory_bytes=GI),
            "STANDARD",
            LadderState(1, ooms=0, disruptions=1),
            2,
            LadderStep(
                "failed",
                "factor base_features failed on profile STANDARD (attempt 3): Error: exit 137; "
                "not retried (only an OOM moves a factor up)",
            ),
            id="sigkill-without-oom",
        ),
        pytest.param(
            _termination(reason="DeadlineExceeded", exit_code=143, detail="Pod was active too long"),
            "HEAVY",
            LadderState(1),
            2,
            LadderStep(
                "failed",
                "factor base_features failed on profile HEAVY (attempt 3): DeadlineExceeded "
                "(Pod was active too long); not retried (only an OOM moves a factor up)",
            ),
            id="deadline-exceeded",
        ),
    ],
)
def test_ladder_step(
    termination: PodTermination, profile: str, state: LadderState, retries: int, expected: LadderStep
) -> None:
    assert _step(termination, profile=profile, state=state, retries=retries) == expected


@pytest.mark.parametrize(
    ("outcome", "factor_failed"),
    [
        pytest.param("oom", True, id="oom-fails-the-factor-for-now"),
        pytest.param("disrupted", False, id="disruption-leaves-it-to-the-next-try"),
        pytest.param("failed", True, id="failed"),
    ],
)
def test_ladder_step_factor_failed(outcome: str, factor_failed: bool) -> None:
    assert LadderStep(outcome, "m").factor_failed is factor_failed  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the ladder as the operator applies it


def test_profile_follows_the_stored_oom_count_not_the_try_number() -> None:
    # try 3 after a zombie and one OOM: one step up, not two
    context = make_context(try_number=3, store=store_with_ooms(1), max_tries=2)

    assert make_operator(retries=2)._apply_attempt_profile(context).name == "MEDIUM"
    # a retry that followed no OOM (heartbeat timeout, zombie) stays on the planned profile
    assert make_operator(retries=2)._apply_attempt_profile(make_context(try_number=2, max_tries=2)).name == "STANDARD"


def test_a_cleared_factor_is_not_moved_up() -> None:
    op = make_operator(retries=2)
    # two OOMs in the first round; clearing after try 3 leaves max_tries = 5: a new round
    context = make_context(try_number=4, store=store_with_ooms(2), max_tries=5)

    assert op._apply_attempt_profile(context).name == "STANDARD"


@pytest.mark.parametrize(
    ("try_number", "profiles_json", "name", "memory", "pool"),
    [
        pytest.param(1, None, "STANDARD", "8Gi", "standard", id="try1"),
        pytest.param(2, None, "MEDIUM", "16Gi", "medium", id="try2"),
        pytest.param(3, None, "HEAVY", "24Gi", "heavy", id="try3"),
        pytest.param(1, '{"STANDARD": {"memory": "256Mi"}}', "STANDARD", "256Mi", "standard", id="override-try1"),
        pytest.param(
            2,
            '{"STANDARD": {"memory": "256Mi"}, "MEDIUM": {"memory": "512Mi"}}',
            "MEDIUM",
            "512Mi",
            "medium",
            id="override-try2",
        ),
    ],
)
def test_pod_is_sized_for_the_attempt(
    try_number: int,
    profiles_json: str | None,
    name: str,
    memory: str,
    pool: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if profiles_json is None:
        monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_PROFILES", profiles_json)
    op = make_operator()
    context = make_context(try_number=try_number, store=store_with_ooms(try_number - 1))

    profile = op._apply_attempt_profile(context)
    pod = op.build_pod_request_obj(context, dry_run=True)

    assert profile.name == name
    container = pod.spec.containers[0]
    assert container.resources.limits == {"memory": memory}
    assert container.resources.requests["memory"] == memory
    assert pod.metadata.labels[pods.LABEL_PROFILE] == name.lower()
    assert pod.metadata.labels[pods.LABEL_FACTOR] == "base_features"
    assert pod.spec.node_selector == {"finetune/pool": pool}
    env = container_env(pod)
    assert env["FINETUNE_PROFILE"] == name
    assert env["FINETUNE_ATTEMPT"] == str(try_number)
    # the pod's own view of its limit still comes from the downward API
    assert "FINETUNE_MEMORY_LIMIT_BYTES" in env


@pytest.mark.parametrize("planned_workers", [pytest.param(None, id="from-planned-profile"), pytest.param(2, id="plan")])
def test_a_try_one_profile_up_keeps_its_workers_and_gains_memory_per_worker(planned_workers: int | None) -> None:
    # STANDARD requests 2 cpus, MEDIUM 4: more workers would each hold a store, and the OOM that
    # moved the factor up would come back with them.
    arguments = ["run", "--run-id", "r", "--factor", "base_features", "--cryptos", "BTC,ETH,SOL,BNB"]
    op = make_operator(arguments=arguments, workers=planned_workers)
    workers = []
    for try_number in (1, 2):
        context = make_context(try_number=try_number, store=store_with_ooms(try_number - 1))
        profile = op._apply_attempt_profile(context)
        env = container_env(op.build_pod_request_obj(context, dry_run=True))
        workers.append((profile.name, env[pods.WORKERS_ENV]))
    assert workers == [("STANDARD", "2"), ("MEDIUM", "2")]
    assert op.workers == 2


def test_resized_pod_is_a_valid_kubernetes_pod() -> None:
    import kubernetes_validate
    from kubernetes.client import ApiClient

    op = make_operator()
    context = make_context(try_number=2, store=store_with_ooms(1))
    op._apply_attempt_profile(context)
    manifest = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))

    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == {"memory": "16Gi"}


def test_profile_env_is_replaced_not_duplicated() -> None:
    op = make_operator()
    op._apply_attempt_profile(make_context(try_number=1))
    op._apply_attempt_profile(make_context(try_number=2))

    names = [var.name for var in op.env_vars]
    assert names.count("FINETUNE_PROFILE") == 1
    assert names.count("FINETUNE_ATTEMPT") == 1


def test_profiles_travel_with_the_plan_entry_with_tolerations_and_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FINETUNE_PROFILES",
        json.dumps(
            {
                "HEAVY": {
                    "memory": "48Gi",
                    "tolerations": [{"key": "highmem", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "node.kubernetes.io/instance-type",
                                                "operator": "In",
                                                "values": ["r6i.2xlarge"],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                }
            }
        ),
    )
    op = make_operator()  # the plan resolves FINETUNE_PROFILES once
    monkeypatch.setenv("FINETUNE_PROFILES", json.dumps({"HEAVY": {"memory": "30Gi"}}))  # changed later: not re-read
    context = make_context(try_number=3, store=store_with_ooms(2))

    op._apply_attempt_profile(context)
    pod = op.build_pod_request_obj(context, dry_run=True)

    assert pod.spec.containers[0].resources.limits == {"memory": "48Gi"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("highmem", "Exists", "NoSchedule")]
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_expressions[0].values == ["r6i.2xlarge"]
    # the STANDARD try carries neither
    first = make_operator()
    first_context = make_context()
    first._apply_attempt_profile(first_context)
    first_pod = first.build_pod_request_obj(first_context, dry_run=True)
    assert not first_pod.spec.tolerations and not first_pod.spec.affinity


def test_oom_sync_is_retried_one_profile_up_by_the_stored_count(kube: FakeCoreV1Api, registered_db: str) -> None:
    kube.kubelet = oom_kill
    store = TaskStateStore()

    with pytest.raises(
        PodOOMKilled, match=r"OOMKilled on profile STANDARD \(limit 8.00Gi, peak -\); retrying on MEDIUM"
    ):
        make_k8s_operator().execute(make_context(store=store))

    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 1, "disruptions": 0}
    # the peak stays unknown: the limit is not a measurement
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    assert recorded_manifest(registered_db) == ("failed", "STANDARD", "OOMKilled")
    assert kube.pods == {}, "the failed pod is deleted once its status and logs were read"

    kube.kubelet = complete
    retry = make_k8s_operator()
    assert retry.execute(make_context(try_number=2, store=store)) is None
    (created,) = kube.calls.created[1:]
    assert retry.pod.metadata.name == created
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"
    assert retry.pod_request_obj.spec.containers[0].resources.limits == {"memory": "16Gi"}


def test_a_disrupted_pod_is_retried_on_the_same_profile_a_bounded_number_of_times(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_DISRUPTION_RETRIES", "1")
    kube.kubelet = lambda pod: set_disrupted(pod, condition_reason="TerminationByKubelet", status_reason="Evicted")
    store = TaskStateStore()

    with pytest.raises(PodDisrupted, match=r"TerminationByKubelet.*retrying on the same profile \(disruption 1 of 1"):
        make_k8s_operator().execute(make_context(store=store))
    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 0, "disruptions": 1}
    assert recorded_manifest(registered_db)[0] == "planned"

    second = make_k8s_operator()
    with pytest.raises(PodFailed, match="1 disruption retries used up"):
        second.execute(make_context(try_number=2, store=store))

    assert second.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "standard"
    attempts = recorded_attempts(registered_db)
    assert [(a[0], a[1], a[4].split(" (")[0].split(":")[0:2]) for a in attempts] == [
        (1, "STANDARD", ["Disrupted", " TerminationByKubelet"]),
        (2, "STANDARD", ["Disrupted", " TerminationByKubelet"]),
    ]
    assert recorded_manifest(registered_db)[0] == "failed"
