"""finetune.redaction: the DSN's password never reaches a line the pod writes."""

from __future__ import annotations

import pytest

from finetune.redaction import error_line, redact_dsn, scrub, scrub_environment


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        pytest.param("postgresql://u:pw123@h:5432/db", "postgresql://u:***@h:5432/db", id="uri"),
        pytest.param("host=h user=u password=pw123 dbname=db", "host=h user=u password=*** dbname=db", id="keywords"),
        pytest.param("postgresql://u@h/db", "postgresql://u@h/db", id="no-password"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_scrub_removes_the_password_anywhere() -> None:
    assert scrub("failed for pw123 at host", "postgresql://u:pw123@h/db") == "failed for *** at host"


def test_error_line_is_one_line_without_the_password() -> None:
    exc = RuntimeError('connection to server at "h" failed:\n\tFATAL: password pw123 rejected\n')
    assert (
        error_line(exc, "postgresql://u:pw123@h/db")
        == 'connection to server at "h" failed: FATAL: password *** rejected'
    )
    assert error_line(ValueError()) == "ValueError"


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN"])
def test_scrub_environment_removes_data_store_secrets(name: str) -> None:
    environ = {name: "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIDPUBLIC"}
    assert scrub_environment("denied: s3cr3t-value for AKIDPUBLIC", environ) == "denied: *** for AKIDPUBLIC"


def test_scrub_environment_leaves_text_alone_without_secrets() -> None:
    assert scrub_environment("denied: abc", {"AWS_SECRET_ACCESS_KEY": "ab"}) == "denied: abc"  # too short to be one
