"""Tests of finetune_sweep.sizing.quantities: Kubernetes memory quantities."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_rows import GI
from finetune_sweep.sizing.quantities import parse_quantity


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        pytest.param("8Gi", 8 * GI, id="gibibytes"),
        pytest.param("512Mi", 512 * 2**20, id="mebibytes"),
        pytest.param("1Ti", 2**40, id="tebibytes"),
        pytest.param("64Ki", 64 * 1024, id="kibibytes"),
        pytest.param("1.5Gi", 3 * GI // 2, id="decimal-binary"),
        pytest.param("2G", 2 * 10**9, id="gigabytes"),
        pytest.param("100M", 10**8, id="megabytes"),
        pytest.param("10k", 10_000, id="kilobytes"),
        pytest.param("1000", 1000, id="plain-bytes"),
        pytest.param(4096, 4096, id="int-bytes"),
        pytest.param("0.5k", 500, id="decimal-decimal"),
    ],
)
def test_parse_quantity(quantity: str | int, expected: int) -> None:
    assert parse_quantity(quantity) == expected


@pytest.mark.parametrize(
    "quantity",
    [
        pytest.param("8GB", id="wrong-suffix"),
        pytest.param("8 gigs", id="words"),
        pytest.param("", id="empty"),
        pytest.param("-1Gi", id="negative"),
        pytest.param("100m", id="milli-bytes"),
        pytest.param("Gi", id="no-number"),
        pytest.param(True, id="bool"),
    ],
)
def test_parse_quantity_refuses(quantity: Any) -> None:
    with pytest.raises(ValueError, match="memory quantity"):
        parse_quantity(quantity)
