"""Kubernetes quantities: memory in bytes (``8Gi``, ``512Mi``, ``1.5G``) and back, for tables."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]{0,2})\s*$")


def parse_quantity(quantity: str | int) -> int:
    """Bytes of a Kubernetes memory quantity (``8Gi``, ``512Mi``, ``1.5G``, ``1000``).

    A fractional byte count is rounded up, as the kubelet does for a limit.

    :param quantity: the quantity; an ``int`` is taken as bytes.
    :raises ValueError: on anything else (unknown suffix, negative, empty, milli-bytes).
    """
    if isinstance(quantity, bool):
        raise ValueError(f"not a memory quantity: {quantity!r}")
    if isinstance(quantity, int):
        if quantity < 0:
            raise ValueError(f"negative memory quantity: {quantity}")
        return quantity
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r} (use e.g. 8Gi, 512Mi, 1.5G or bytes)")
    number, suffix = match.groups()
    if suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    elif suffix == "":
        factor = 1
    else:
        raise ValueError(f"not a memory quantity: {quantity!r} (suffix {suffix!r}; use Ki/Mi/Gi/Ti, k/M/G/T or bytes)")
    try:
        return math.ceil(Decimal(number) * factor)
    except InvalidOperation as err:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"not a memory quantity: {quantity!r}") from err


def cpu_millis(quantity: str) -> int:
    """Millicores of a cpu quantity (``"2"``, ``"0.5"``, ``"500m"``)."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return int(float(quantity) * 1000)


def format_bytes(n_bytes: float | None) -> str:
    """Human-readable binary size (``7.68Gi``) for tables and messages.

    :param n_bytes: a byte count, or None (shown as ``-``).
    """
    if n_bytes is None:
        return "-"
    for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f}{suffix}"
    return f"{int(n_bytes)}B"
