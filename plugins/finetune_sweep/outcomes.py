"""The words a pod attempt ends with, as the attempt history and the manifest record them.

One spelling for every module that writes or reads ``exit_reason`` (the operator, the local
backend, the trigger, the attempt records, the recommender): a reason is matched as text in SQL
and in the sizing history, so a second spelling would silently split the evidence.
"""

from __future__ import annotations

# The kernel (or the local backend's watchdog) killed the container at its memory limit.
OOM_REASON = "OOMKilled"
# The pod ran past its activeDeadlineSeconds (the kubelet's pod reason; the local backend alike).
DEADLINE_EXCEEDED = "DeadlineExceeded"
# The cluster ended the pod (eviction, preemption, node shutdown): ``Disrupted: <reason>``.
DISRUPTED_PREFIX = "Disrupted: "
# The pod was deleted under the task before a terminal status was seen.
DELETED_REASON = "PodDeleted"
# The task itself was killed (worker shutdown, a user marking it): not a pod failure.
KILLED_REASON = "Killed"
# The task's execution_timeout elapsed: the pod goes with the task, not retried.
TIMED_OUT_REASON = "TimedOut: the task's execution_timeout elapsed"
# The container could not be configured (a missing DSN Secret or key): the kubelet's waiting reason.
CONFIG_ERROR_REASON = "CreateContainerConfigError"
# The API server never created the pod (refused, admission, quota).
NOT_CREATED_REASON = "PodNotCreated"
