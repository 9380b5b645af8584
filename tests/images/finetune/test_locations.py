"""Data where a cluster keeps it: s3:// against a local S3 server (moto), gs:// and file:// URIs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import moto.settings
import pandas as pd
import psycopg
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

import finetune.locations
from finetune.data import MarketData
from finetune.locations import DataError, DataLocation, one_line
from finetune.synthetic import synthetic_ohlcv

BUCKET = "market-data"
SECRET = "wJalrXUtnFEMI-not-a-real-key-0123456789"
AS_OF = pd.Timestamp("2026-06-07T00:00:00Z")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server holding BTC.csv and ETH.parquet under s3://market-data/hourly/."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"127.0.0.1:{port}"
    store = pafs.S3FileSystem(
        access_key="setup",
        secret_key="setup",
        region="us-east-1",
        endpoint_override=endpoint,
        scheme="http",
        allow_bucket_creation=True,
    )
    store.create_dir(BUCKET)
    for symbol, suffix in (("BTC", ".csv"), ("ETH", ".parquet")):
        frame = synthetic_ohlcv(symbol).loc[:AS_OF].iloc[-1000:]
        with store.open_output_stream(f"{BUCKET}/hourly/{symbol}{suffix}") as out:
            if suffix == ".csv":
                out.write(frame.to_csv(index_label="timestamp").encode())
            else:
                out.write(frame.to_parquet())
    yield endpoint
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return env


@pytest.fixture
def refused_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server checks signatures from now on; the test's access key is unknown to it."""
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


def _uri(endpoint: str, prefix: str = "hourly") -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http"


def test_s3_bars_equal_the_same_files_in_a_folder(s3_endpoint, aws_env, tmp_path):
    for symbol, suffix in (("BTC", ".csv"), ("ETH", ".parquet")):
        frame = synthetic_ohlcv(symbol).loc[:AS_OF].iloc[-1000:]
        if suffix == ".csv":
            frame.to_csv(tmp_path / f"{symbol}.csv", index_label="timestamp")
        else:
            frame.to_parquet(tmp_path / f"{symbol}.parquet")
    remote, local = MarketData(_uri(s3_endpoint)), MarketData(tmp_path.as_uri())
    for symbol in ("BTC", "ETH"):
        bars = remote.ohlcv(symbol, as_of=AS_OF)
        pd.testing.assert_frame_equal(bars, local.ohlcv(symbol, as_of=AS_OF))
        assert len(bars) == 999 and bars.index[-1] == AS_OF - pd.Timedelta(hours=1)


def test_the_endpoint_can_come_from_aws_endpoint_url(s3_endpoint, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_endpoint}")
    bars = MarketData(f"s3://{BUCKET}/hourly").ohlcv("BTC", as_of=AS_OF)
    assert len(bars) == 999


def test_a_missing_object_names_the_uri(s3_endpoint, aws_env):
    uri = _uri(s3_endpoint)
    with pytest.raises(DataError) as info:
        MarketData(uri).ohlcv("SOL", as_of=AS_OF)
    assert str(info.value) == f"no data for symbol SOL: neither SOL.parquet nor SOL.csv in {uri}"


def test_refused_credentials_name_the_uri_never_the_secret(s3_endpoint, aws_env, refused_credentials):
    uri = _uri(s3_endpoint)
    with pytest.raises(DataError) as info:
        MarketData(uri).ohlcv("BTC", as_of=AS_OF)
    message = str(info.value)
    assert message.startswith(f"symbol BTC: cannot read {uri}: ") and "\n" not in message
    assert SECRET not in message


def test_credentials_in_the_uri_are_refused_without_echoing_them():
    with pytest.raises(ValueError) as info:
        DataLocation.from_uri(f"s3://AKIDTEST:{SECRET}@{BUCKET}/hourly")
    assert "credentials do not belong in the data URI 's3://market-data/hourly'" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "retry", [pytest.param("&retry_limit_seconds=1", id="limit-in-uri"), pytest.param("", id="default-limit")]
)
def test_gcs_errors_name_the_uri(monkeypatch, retry):
    # No GCS emulator here: an unreachable endpoint shows the error path, bounded by the retry
    # limit of the URI or by GCS_RETRY_LIMIT_SECONDS (the client's own default is many minutes).
    monkeypatch.setattr(finetune.locations, "GCS_RETRY_LIMIT_SECONDS", 1)
    uri = f"gs://{BUCKET}/hourly?endpoint_override=127.0.0.1:{_free_port()}&scheme=http{retry}"
    location = DataLocation.from_uri(uri)
    assert isinstance(location.filesystem, pafs.GcsFileSystem) and location.base == f"{BUCKET}/hourly"
    with pytest.raises(DataError, match=f"symbol BTC: cannot read {uri.replace('?', '[?]')}: "):
        MarketData(uri).ohlcv("BTC", as_of=AS_OF)


def test_file_uris_read_the_local_folder(tmp_path):
    location = DataLocation.from_uri(tmp_path.as_uri())
    assert location.is_local and location.base == str(tmp_path)
    (tmp_path / "BTC.csv").write_text("timestamp,open,high,low,close,volume\n")
    frame, shown = location.read_table("BTC")
    assert shown == str(tmp_path / "BTC.csv") and frame.empty


def test_store_errors_are_one_line_without_the_environments_secret(aws_env):
    assert one_line(OSError(f"denied for {SECRET}\nsecond line")) == "denied for *** second line"


# --- the pod's command line --------------------------------------------------------------------


def _run_pod(dsn: str, data_uri: str, aws: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **aws, "FINETUNE_DB_URL": dsn, "FINETUNE_DATA_URI": data_uri}
    argv = [
        "run",
        "--run-id",
        "s3-run",
        "--factor",
        "base_features",
        "--cryptos",
        "BTC,ETH",
        "--cost-bps",
        "10",
        "--as-of",
        AS_OF.isoformat(),
        "--n-folds",
        "1",
        "--n-seeds",
        "5",
        "--hold-bars",
        "4",
        "--train-bars",
        "300",
        "--test-bars",
        "48",
    ]
    return subprocess.run(
        [sys.executable, "-m", "finetune", *argv], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_subprocess_run_reads_s3(migrated_db, s3_endpoint, aws_env):
    proc = _run_pod(migrated_db, _uri(s3_endpoint), aws_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["exit_code"] == 0
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_results").fetchone()[0] == 2


@pytest.mark.parametrize(
    "case", [pytest.param("missing-object", id="missing-object"), pytest.param("refused", id="refused-credentials")]
)
def test_subprocess_s3_refusals_exit_2_without_the_secret(migrated_db, s3_endpoint, aws_env, monkeypatch, case):
    uri = _uri(s3_endpoint, prefix="daily" if case == "missing-object" else "hourly")
    if case == "refused":
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    proc = _run_pod(migrated_db, uri, aws_env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and uri in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_runs").fetchone()[0] == 0


def test_the_data_uri_is_stored_with_the_run_but_never_a_secret(migrated_db, s3_endpoint, aws_env):
    assert _run_pod(migrated_db, _uri(s3_endpoint), aws_env).returncode == 0
    with psycopg.connect(migrated_db) as conn:
        (params,) = conn.execute("SELECT params FROM finetune_runs").fetchone()
    assert params["data_uri"] == _uri(s3_endpoint) and SECRET not in json.dumps(params)


@pytest.mark.parametrize(
    ("query", "seconds"),
    [pytest.param("", 60, id="default"), pytest.param("?retry_limit_seconds=5", 5, id="from-the-uri")],
)
def test_gcs_retries_are_bounded(query, seconds):
    location = DataLocation.from_uri(f"gs://{BUCKET}/hourly{query}")
    options = location.filesystem.__reduce__()[1][0]  # what pyarrow pickles: the client's options
    assert options["retry_time_limit"].total_seconds() == seconds
    assert location.uri == f"gs://{BUCKET}/hourly{query}"  # messages show the URI as given
