"""The pod's event stream: one JSON object per line on stdout (DESIGN 4.4).

Every line carries ``event``, ``run_id`` and ``factor``; it is flushed at once so that the task
log (``kubectl logs`` or the local backend) shows progress as it happens. Lines carry no wall-clock
stamp: the package reads no clock but a monotonic one (durations), and the task log already
timestamps each line. Secrets
registered with the log (the database password) are replaced by ``***`` in every line, whatever
field or error message they hide in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO


class EventLog:
    """Writes events for one run and factor.

    :param run_id: the sweep run, or ``None`` before it is known (``migrate``).
    :param factor: the factor of this pod, or ``None``.
    :param secrets: strings that must never appear in a line.
    :param stream: where lines go; default ``sys.stdout`` at emit time (so pytest's capsys sees it).
    """

    def __init__(
        self,
        *,
        run_id: str | None = None,
        factor: str | None = None,
        secrets: Iterable[str | None] = (),
        stream: TextIO | None = None,
    ) -> None:
        self.run_id = run_id
        self.factor = factor
        self._secrets = tuple(s for s in secrets if s)
        self._stream = stream

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line and return the record (before redaction, for tests and callers)."""
        record = {
            "event": event,
            "run_id": self.run_id,
            "factor": self.factor,
            **fields,
        }
        line = json.dumps(record, default=str, sort_keys=False)
        for secret in self._secrets:
            line = line.replace(secret, "***")
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()
        return record


def print_error(message: str) -> None:
    """The one human-readable line of a refusal or a failure, on stderr (stdout carries events).

    The task log shows it beside the events; callers pass messages already scrubbed of secrets
    (:func:`finetune.redaction.error_line`).
    """
    print(f"finetune: error: {message}", file=sys.stderr, flush=True)
