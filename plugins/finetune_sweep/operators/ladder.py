"""The OOM ladder of a factor: what the tries of one round learnt, and the profile a try runs on.

A round of tries is the tries between two clears of the task (:func:`round_start`). Its OOM and
disruption counts (:class:`LadderState`) live in Airflow's task state store under
:data:`LADDER_STATE_KEY`, shared by the tries of one task instance and written only when the
operator classifies an OOM or a disruption; without a store they are counted back from the recorded
attempts (:func:`recorded_ladder`). A try runs on its planned profile moved one step up per OOM of
its round (:func:`attempt_profile`), never by Airflow's try number.

A classified failure takes one :func:`ladder_step`: an OOM below the top profile retries one
profile up, a disruption retries on the same profile while the budget lasts, anything else fails
the factor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk.exceptions import AirflowFailException

from finetune_sweep.db.attempts import count_round_attempts
from finetune_sweep.db.dsn import dsn_from_connection, redact
from finetune_sweep.sizing.profiles import PodProfile, next_profile
from finetune_sweep.sizing.quantities import format_bytes

if TYPE_CHECKING:
    from finetune_sweep.pods.termination import PodTermination

__all__ = [
    "LADDER_STATE_KEY",
    "LadderState",
    "LadderStep",
    "attempt_profile",
    "ladder_step",
    "recorded_ladder",
    "round_start",
    "save_ladder",
    "stored_ladder",
]

_Log = logging.Logger | logging.LoggerAdapter

# The task state store key of the ladder (shared by the tries of one mapped task instance).
LADDER_STATE_KEY = "finetune_ladder"


@dataclass(frozen=True)
class LadderState:
    """What the tries of one round of a factor learnt: OOMs and disruptions so far.

    :param round: the first try number of the round (a cleared task starts a new round).
    :param ooms: OOMs classified in this round (the profile moves up one step per OOM).
    :param disruptions: cluster disruptions classified in this round (retried on the same profile).
    """

    round: int
    ooms: int = 0
    disruptions: int = 0

    @classmethod
    def from_stored(cls, stored: Any, *, current_round: int) -> LadderState:
        """The stored state if it belongs to ``current_round``, else a fresh one.

        :param stored: what the task state store returned (a dict, or anything else).
        :param current_round: :func:`round_start` of this try.
        """
        if isinstance(stored, Mapping) and stored.get("round") == current_round:
            ooms, disruptions = stored.get("ooms"), stored.get("disruptions")
            if isinstance(ooms, int) and isinstance(disruptions, int) and ooms >= 0 and disruptions >= 0:
                return cls(current_round, ooms, disruptions)
        return cls(current_round)


def round_start(*, max_tries: int | None, retries: int) -> int:
    """The first try number of the current round of tries.

    Clearing a task raises ``max_tries`` to ``try_number + retries`` (as Airflow computes it for
    reschedules too), so a round starts at ``max_tries - retries + 1``; this only tells rounds
    apart, the profile itself follows the OOMs counted in the round.

    :param max_tries: the task instance's ``max_tries`` (None when unknown: one round).
    :param retries: the task's ``retries``.
    """
    if max_tries is None or max_tries < retries:
        return 1
    return max_tries - retries + 1


def attempt_profile(planned: str, *, try_number: int, profiles: Mapping[str, PodProfile]) -> PodProfile:
    """The planned profile moved ``try_number - 1`` steps up, capped at the top.

    The operator passes ``ooms + 1`` (the OOMs of the round), never Airflow's try number.

    :param planned: the planned profile name.
    :param try_number: 1 + the number of steps to move up.
    :param profiles: profile name -> profile.
    """
    if planned not in profiles:
        raise AirflowFailException(f"unknown profile {planned!r}; known profiles: {', '.join(profiles)}")
    profile = profiles[planned]
    for _ in range(max(try_number, 1) - 1):
        higher = next_profile(profile.name, profiles)
        if higher is None:
            break
        profile = higher
    return profile


def stored_ladder(store: Any, *, current_round: int, log: _Log) -> LadderState | None:
    """This round's state from the task state store; None without a store or when it cannot be read.

    :param store: the task state store of the context (None when Airflow gives none).
    :param current_round: :func:`round_start` of this try.
    :param log: where an unreadable store is reported.
    """
    if store is None:
        return None
    try:
        return LadderState.from_stored(store.get(LADDER_STATE_KEY), current_round=current_round)
    except Exception as exc:  # noqa: BLE001 - the store is an API call: never let it decide the outcome
        log.warning("task state store unreadable (%s); counting the recorded attempts", exc)
        return None


def recorded_ladder(
    conn_id: str, *, run_id: str, factor: str, airflow_run_id: str, current_round: int, log: _Log
) -> LadderState:
    """This round's state counted from the recorded attempts; a fresh one when they cannot be read.

    :param conn_id: the Airflow connection of the finetune database.
    :param run_id: the finetune run id.
    :param factor: the factor.
    :param airflow_run_id: the Airflow run of the tries.
    :param current_round: :func:`round_start` of this try.
    :param log: where unreadable records are reported.
    """
    dsn = None
    try:
        dsn = dsn_from_connection(conn_id)
        ooms, disruptions = count_round_attempts(
            dsn, run_id=run_id, factor=factor, airflow_run_id=airflow_run_id, since_attempt=current_round
        )
        return LadderState(current_round, ooms, disruptions)
    except Exception as exc:  # noqa: BLE001 - no evidence of earlier OOMs: the planned profile
        log.warning(
            "no task state store and no attempt records (%s): factor %s starts on its planned profile",
            redact(str(exc), [dsn]),
            factor,
        )
        return LadderState(current_round)


def save_ladder(store: Any, state: LadderState) -> None:
    """Keep ``state`` in the task state store for the next tries of the round.

    :param store: the task state store of the context.
    :param state: the round's state after this try's classified OOM or disruption.
    """
    store.set(LADDER_STATE_KEY, asdict(state))


@dataclass(frozen=True)
class LadderStep:
    """What a classified failure does to the factor.

    :param outcome: ``oom`` (retried one profile up), ``disrupted`` (retried on the same profile)
        or ``failed`` (not retried).
    :param message: the task's error message.
    :param state: the round's state to keep for the retry; None: unchanged.
    """

    outcome: Literal["oom", "disrupted", "failed"]
    message: str
    state: LadderState | None = None

    @property
    def factor_failed(self) -> bool:
        """Whether the record marks the factor failed (an OOM does, even when retried one profile up)."""
        return self.outcome != "disrupted"


def ladder_step(
    termination: PodTermination,
    *,
    factor: str | None,
    profile: PodProfile,
    higher: PodProfile | None,
    attempt: int,
    limit: int,
    state: LadderState,
    disruption_retries: int,
) -> LadderStep:
    """The ladder's answer to a classified failure: OOM below the top, disruption within the
    budget, or a failure of the factor.

    :param termination: how the attempt ended.
    :param factor: the factor.
    :param profile: the profile the pod ran on.
    :param higher: the profile one step up, None at the top (or when it cannot be told).
    :param attempt: the try number the attempt is recorded under.
    :param limit: the memory limit the pod ran with, in bytes.
    :param state: the round's state before this failure.
    :param disruption_retries: how many disruptions a round may retry (``FINETUNE_DISRUPTION_RETRIES``).
    """
    said = f" ({termination.detail})" if termination.detail else ""
    if termination.oom_killed:
        what = f"factor {factor} {termination.reason} on profile {profile.name}"
        sizes = f"(limit {format_bytes(limit)}, peak {format_bytes(termination.peak_memory_bytes)})"
        if higher is None:
            return LadderStep(
                "failed",
                f"{what} {sizes}; already at the largest profile {profile.name}: raise its memory "
                "(FINETUNE_PROFILES) or split the factor",
            )
        return LadderStep(
            "oom",
            f"{what} {sizes}; retrying on {higher.name} ({format_bytes(higher.memory_bytes)})",
            replace(state, ooms=state.ooms + 1),
        )
    if termination.disrupted:
        what = f"factor {factor}: the cluster disrupted its pod on profile {profile.name}: {termination.reason}{said}"
        if state.disruptions < disruption_retries:
            return LadderStep(
                "disrupted",
                f"{what}; retrying on the same profile "
                f"(disruption {state.disruptions + 1} of {disruption_retries} allowed)",
                replace(state, disruptions=state.disruptions + 1),
            )
        return LadderStep(
            "failed", f"{what}; {disruption_retries} disruption retries used up (FINETUNE_DISRUPTION_RETRIES)"
        )
    return LadderStep(
        "failed",
        f"factor {factor} failed on profile {profile.name} (attempt {attempt}): "
        f"{termination.exit_reason}{said}; not retried (only an OOM moves a factor up)",
    )
