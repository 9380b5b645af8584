"""finetune.events: one flushed JSON object per line, secrets never written."""

from __future__ import annotations

import io
import json

import pytest

from finetune.events import EventLog


class _FlushCounter(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_each_event_is_one_flushed_json_line() -> None:
    stream = _FlushCounter()
    log = EventLog(run_id="r1", factor="base_features", stream=stream)
    log.emit("run_started", n_keys=4)
    log.emit("fold_done", i=1, n=2, crypto="BTC", fold_id=0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and stream.flushes == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "run_started" and first["run_id"] == "r1" and first["factor"] == "base_features"
    assert "ts" not in first, "event lines carry no wall-clock stamp"
    assert (second["i"], second["n"]) == (1, 2)


def test_secrets_are_redacted_in_any_field() -> None:
    stream = io.StringIO()
    log = EventLog(run_id="r1", factor="f", secrets=["hunter2", None, ""], stream=stream)
    log.emit("error", message="could not connect as postgres:hunter2@db", nested={"dsn": "x:hunter2@y"})
    assert "hunter2" not in stream.getvalue()
    assert json.loads(stream.getvalue())["message"] == "could not connect as postgres:***@db"


def test_defaults_to_stdout_at_emit_time(capsys: pytest.CaptureFixture[str]) -> None:
    EventLog().emit("migrate_finished", applied=[])
    record = json.loads(capsys.readouterr().out)
    assert record["event"] == "migrate_finished" and record["run_id"] is None
