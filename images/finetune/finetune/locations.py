"""Where market data files live: a local folder, or an S3 / GCS prefix, read through ``pyarrow.fs``.

A pod cannot see a laptop's folder, so the same ``<SYMBOL>.parquet`` / ``<SYMBOL>.csv`` layout is
read from ``file:///dir``, ``s3://bucket/prefix`` or ``gs://bucket/prefix``. ``pyarrow.fs`` is
already in the image (pyarrow reads parquet), so object stores cost no new dependency.

Credentials come from the standard sources and never from the URI: for S3 the ``AWS_*``
environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``), the
config files, or the node's / pod's role (IRSA: ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``);
for GCS ``GOOGLE_APPLICATION_CREDENTIALS`` or workload identity. A URI with ``user:password@`` is
refused (it would be stored in ``finetune_runs.params`` and printed in logs). S3-compatible stores
(MinIO, Ceph, a local test server) are reached with the ``AWS_ENDPOINT_URL`` environment variable
or with pyarrow's URI options, e.g.
``s3://bucket/prefix?endpoint_override=minio:9000&scheme=http&region=us-east-1``.

Errors (a missing object, refused credentials, an unreachable endpoint) are :class:`DataError`
with one line naming the URI and the symbol, with any credential found in the environment
scrubbed from the store's message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import pandas as pd
import pyarrow.fs as pafs

from finetune.redaction import error_line, scrub_environment

OBJECT_STORE_SCHEMES = ("s3", "gs")
# The GCS client retries transient errors (an unreachable endpoint, missing credentials) for
# minutes by default; a pod should refuse its data within one. ``?retry_limit_seconds=N`` in the
# URI overrides this.
GCS_RETRY_LIMIT_SECONDS = 60
FORMATS: tuple[tuple[str, Callable[..., pd.DataFrame]], ...] = ((".parquet", pd.read_parquet), (".csv", pd.read_csv))


class DataError(ValueError):
    """Market data that cannot be used; the one-line message names the symbol, file or as-of."""


def one_line(exc: BaseException) -> str:
    """The store's error as one line, with the environment's data-store secrets scrubbed."""
    return scrub_environment(error_line(exc))


def _with_gcs_retry_limit(data_uri: str) -> str:
    """``data_uri`` with :data:`GCS_RETRY_LIMIT_SECONDS` as its GCS retry limit unless it has one."""
    parts = urlsplit(data_uri)
    if parts.scheme != "gs" or "retry_limit_seconds" in parse_qs(parts.query):
        return data_uri
    query = "&".join(filter(None, [parts.query, f"retry_limit_seconds={GCS_RETRY_LIMIT_SECONDS}"]))
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class DataLocation:
    """A folder of ``<SYMBOL>.parquet|.csv`` files on some filesystem.

    :param filesystem: the pyarrow filesystem.
    :param base: the folder's path on it (``/dir`` or ``bucket/prefix``).
    :param uri: the URI as shown in messages.
    """

    filesystem: pafs.FileSystem
    base: str
    uri: str

    @classmethod
    def from_uri(cls, data_uri: str) -> DataLocation:
        """``file:///dir``, ``s3://bucket/prefix`` or ``gs://bucket/prefix``, or ValueError."""
        parts = urlsplit(data_uri)
        if parts.scheme == "file" and parts.netloc in ("", "localhost"):
            directory = unquote(parts.path)
            return cls(pafs.LocalFileSystem(), directory.rstrip("/") or "/", directory)
        if parts.scheme in OBJECT_STORE_SCHEMES and parts.hostname:
            if parts.username is not None or parts.password is not None:
                shown = urlunsplit(parts._replace(netloc=parts.hostname))
                raise ValueError(
                    f"credentials do not belong in the data URI {shown!r}: use the AWS_* environment, "
                    "GOOGLE_APPLICATION_CREDENTIALS or workload identity"
                )
            try:
                filesystem, base = pafs.FileSystem.from_uri(_with_gcs_retry_limit(data_uri))
            except (ValueError, OSError) as exc:
                raise ValueError(f"unusable data URI {data_uri!r}: {one_line(exc)}") from exc
            return cls(filesystem, base.rstrip("/"), data_uri)
        raise ValueError(
            f"unsupported data URI {data_uri!r}: use synthetic://, file:///absolute/dir, "
            "s3://bucket/prefix or gs://bucket/prefix"
        )

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def _shown(self, name: str) -> str:
        """A file as messages show it: the local path, or ``s3://bucket/prefix/NAME``."""
        if self.is_local:
            return f"{self.base.rstrip('/')}/{name}"
        parts = urlsplit(self.uri)
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}", query=""))

    def read_table(self, symbol: str) -> tuple[pd.DataFrame, str]:
        """(``<SYMBOL>.parquet``, preferred, or ``<SYMBOL>.csv`` as read by pandas, its shown name).

        :raises DataError: neither file exists, the store refused or failed, the file is unreadable.
        """
        names = [f"{symbol}{suffix}" for suffix, _ in FORMATS]
        try:
            infos = self.filesystem.get_file_info([f"{self.base}/{name}" for name in names])
        except OSError as exc:
            raise DataError(f"symbol {symbol}: cannot read {self.uri}: {one_line(exc)}") from exc
        for (_, reader), name, info in zip(FORMATS, names, infos, strict=True):
            if info.type != pafs.FileType.File:
                continue
            shown = self._shown(name)
            try:
                with self.filesystem.open_input_file(info.path) as handle:
                    return reader(handle), shown
            except (ValueError, OSError) as exc:
                raise DataError(f"symbol {symbol}: cannot read {shown}: {one_line(exc)}") from exc
        where = self.base if self.is_local else self.uri
        raise DataError(f"no data for symbol {symbol}: neither {names[0]} nor {names[1]} in {where}")
