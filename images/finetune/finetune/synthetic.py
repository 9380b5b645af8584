"""The built-in synthetic markets: deterministic hourly bars, one with a planted edge, one without.

Two markets, chosen by the data URI (DESIGN 4.1):

- ``synthetic://`` (the default when no data URI is given): a **planted lead-lag**. BTC is a
  driftless random walk; each alt's bar log return is ``beta * r_btc[t-1]`` plus its own noise
  (``beta``: :data:`LEAD_LAG_BETA` unless the URI says ``?beta=B``, 0 to :data:`MAX_BETA`), so
  BTC's latest bar return predicts every alt's next bar. The alts' own noise is
  independent of BTC's: with a contemporaneous loading as well, an alt's own last return would
  carry BTC's and the edge could be found without looking at BTC at all (``base_features``);
  here only a model that reads BTC's bar (``btc_features``) can find it. The own noise's
  long-run vol is chosen so that the alt's total hourly vol stays the one in the table; at a
  beta so large that BTC's part alone would exceed it, the own noise keeps
  :data:`MIN_OWN_VOL_SHARE` of the table's vol and the alt's total vol is larger.
- ``synthetic://random-walk``: **no edge anywhere**. Every symbol is a driftless random walk;
  the alts' shocks load on BTC's shocks of the *same* bar
  (``z = rho * z_btc + sqrt(1 - rho^2) * z_own``), so they co-move with it as real crypto does,
  but nothing known at a bar's close predicts the next bar's direction.

Both use GARCH(1,1) volatility (Bollerslev 1986),
``h_t = omega + alpha * eps_{t-1}^2 + beta * h_{t-1}``, so volatility clusters. Bars are hourly
from :data:`SYNTHETIC_START` to :data:`SYNTHETIC_END` (and on, block after block of the same
length, as far as a later as-of needs), the same bytes on every machine and at any time: each symbol's generator is seeded by ``zlib.crc32`` of its name (``hash()`` is salted per
process), or by ``(seed, crc32(name))`` when the URI carries ``?seed=N``, which gives
independent markets of the same kind for simulations (``synthetic://random-walk?seed=7``), and
``?beta=B`` sets the planted market's coefficient (``synthetic://?beta=0.5&seed=3``: a weaker
edge, for power curves; ``?beta=0``: alts that BTC does not lead; the random walk has no beta).
``?symbols=N`` sizes the market: the first N of the eight named symbols, or all eight followed
by ``SYN009`` ... ``SYN<N>`` (each with its own seeded price, vol and correlation) for sweeps over
many cryptos (``synthetic://?symbols=50``); the named symbols' bars are the same at any N.
The whole history is generated once and cut at ``as_of`` by the caller, so a bar never changes
with the as-of that reads it.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

SCHEME = "synthetic"
SYNTHETIC_URI = "synthetic://"
RANDOM_WALK_URI = "synthetic://random-walk"
LEAD_LAG = "lead-lag"
RANDOM_WALK = "random-walk"
MARKET_KINDS = (LEAD_LAG, RANDOM_WALK)
SYNTHETIC_START = pd.Timestamp("2021-01-01T00:00:00Z")
SYNTHETIC_END = pd.Timestamp("2027-01-01T00:00:00Z")  # exclusive end of the first block
# Later as-ofs (a weekly schedule goes on for years) extend the market by blocks of the same
# length, so that no as-of ever runs out of data while every bar of a block stays fixed.
SYNTHETIC_BLOCK = SYNTHETIC_END - SYNTHETIC_START
SYNTHETIC_SYMBOLS = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX")
LEADER = "BTC"
# An alt's bar log return per unit of BTC's previous bar log return in the planted market. The
# issue suggested about 0.3; the model cannot see that: it forecasts the 24-bar return with
# absolute entry thresholds (0 to 0.004) chosen at a 10 bp/side cost, so what matters is the
# absolute size of the one-bar forecast, beta * BTC's hourly vol (0.007). At 0.3 that is 0.002,
# one 10 bp round trip and below the noise of a training window's mean 24-bar return (~0.003),
# and the selection often shrinks it away: at 0.3, 4 of the 8 ETH/SOL keys (4 folds) rank at or
# above the random seeds' 95th percentile and beat buy-and-hold at 0 bp (the random walk: 1).
# 1.0 (0.007 per bar) is the smallest of 0.3..1.2 that the model finds in >= 6 of the 8 keys on
# this market and on re-seeded ones, while costs still eat into it (test_synthetic.py).
# Every alt's hourly vol exceeds this share of BTC's, so its own noise keeps a positive vol.
LEAD_LAG_BETA = 1.0
# ?beta=B (a decimal, 0 to MAX_BETA) sets the coefficient per URI. Past about 1.28 (the smallest
# alt vol over BTC's, 0.009 / 0.007) BTC's part alone exceeds an alt's table vol: the own noise
# then keeps this share of the table vol, so that an alt never becomes a lagged copy of BTC.
MAX_BETA = 5.0
MIN_OWN_VOL_SHARE = 0.25
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

# name: (first price, long-run hourly vol, correlation of its shocks with BTC's in the random walk)
_PARAMS = {
    "BTC": (29_000.0, 0.0070, 1.0),
    "ETH": (730.0, 0.0090, 0.80),
    "SOL": (1.50, 0.0130, 0.65),
    "BNB": (37.0, 0.0090, 0.60),
    "XRP": (0.22, 0.0110, 0.55),
    "ADA": (0.18, 0.0110, 0.60),
    "DOGE": (0.0047, 0.0140, 0.50),
    "AVAX": (3.30, 0.0130, 0.60),
}
# ?symbols=N (up to MAX_SYMBOLS) adds symbols SYN009, SYN010, ... after the eight named ones, for
# sweeps over many cryptos; each one's price, vol and correlation come from its own name's seed.
MAX_SYMBOLS = 500
EXTRA_SYMBOL_PREFIX = "SYN"
_GARCH_ALPHA = 0.06
_GARCH_BETA = 0.92
_ALLOWED = (
    "synthetic:// (planted lead-lag), synthetic://random-walk (no edge), optionally with ?seed=N (an integer >= 0) "
    f"and ?symbols=N (1 to {MAX_SYMBOLS}: the eight named symbols, then {EXTRA_SYMBOL_PREFIX}009, ...), "
    f"and on the planted market ?beta=B (a decimal from 0 to {MAX_BETA:g}, default {LEAD_LAG_BETA:g})"
)


class SyntheticDataError(ValueError):
    """A symbol the synthetic market does not have; the message lists the ones it has."""


@dataclass(frozen=True)
class SyntheticSpec:
    """Which synthetic market a URI asks for: its kind, an optional seed, its size and the
    planted coefficient (used by the lead-lag market only)."""

    kind: str = LEAD_LAG
    seed: int | None = None
    n_symbols: int = len(SYNTHETIC_SYMBOLS)
    beta: float = LEAD_LAG_BETA

    @property
    def symbols(self) -> tuple[str, ...]:
        """The market's symbols: the first ``n_symbols`` of the named ones, then SYN009, ..."""
        extra = (f"{EXTRA_SYMBOL_PREFIX}{i:03d}" for i in range(len(SYNTHETIC_SYMBOLS) + 1, self.n_symbols + 1))
        return SYNTHETIC_SYMBOLS[: self.n_symbols] + tuple(extra)


def is_synthetic_uri(data_uri: str) -> bool:
    """Whether ``data_uri`` names a synthetic market (``synthetic://...``)."""
    return urlsplit(data_uri).scheme == SCHEME


def parse_synthetic_uri(data_uri: str) -> SyntheticSpec:
    """The market of ``synthetic://[lead-lag|random-walk][?seed=N][&symbols=N][&beta=B]``, or
    ValueError naming the URI and what is allowed.

    ``synthetic://`` and ``synthetic://lead-lag`` are the planted market; ``beta`` is its
    coefficient (the random walk refuses one).
    """
    parts = urlsplit(data_uri)
    kind = parts.netloc or LEAD_LAG
    if parts.scheme != SCHEME or kind not in MARKET_KINDS or parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"unsupported synthetic data URI {data_uri!r}: use {_ALLOWED}")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        query = {"": []}
    unknown = sorted(set(query) - {"seed", "symbols", "beta"})
    seeds, counts, betas = query.get("seed", []), query.get("symbols", []), query.get("beta", [])
    integers = [values for name, values in query.items() if name != "beta"]
    if (
        unknown
        or any(len(values) > 1 for values in query.values())
        or any(not (values[0].isascii() and values[0].isdigit()) for values in integers)
        or (betas and (kind != LEAD_LAG or not _DECIMAL.fullmatch(betas[0])))
    ):
        raise ValueError(f"unsupported synthetic data URI {data_uri!r}: use {_ALLOWED}")
    n_symbols = int(counts[0]) if counts else len(SYNTHETIC_SYMBOLS)
    beta = float(betas[0]) if betas else LEAD_LAG_BETA
    if not 1 <= n_symbols <= MAX_SYMBOLS or not 0.0 <= beta <= MAX_BETA:
        raise ValueError(f"unsupported synthetic data URI {data_uri!r}: use {_ALLOWED}")
    return SyntheticSpec(kind=kind, seed=int(seeds[0]) if seeds else None, n_symbols=n_symbols, beta=beta)


def symbol_params(symbol: str) -> tuple[float, float, float]:
    """(first price, long-run hourly vol, correlation with BTC's shocks) of a synthetic symbol.

    The named ones have fixed values; an extra one (SYN009, ...) draws them from its name's seed,
    in the named ones' ranges, so the same symbol is the same market in every URI that has it.
    """
    if symbol in _PARAMS:
        return _PARAMS[symbol]
    rng = np.random.default_rng([symbol_seed(symbol), 1])
    return (float(10 ** rng.uniform(-2.0, 3.0)), float(rng.uniform(0.009, 0.014)), float(rng.uniform(0.5, 0.8)))


def describe(spec: SyntheticSpec) -> str:
    """The market's symbols as an error message lists them (a range past the named ones), and
    the planted coefficient when the URI set one other than the default."""
    symbols = spec.symbols
    if len(symbols) <= len(SYNTHETIC_SYMBOLS):
        listed = ", ".join(symbols)
    else:
        listed = f"{', '.join(SYNTHETIC_SYMBOLS)}, {symbols[len(SYNTHETIC_SYMBOLS)]} to {symbols[-1]}"
    if spec.kind == LEAD_LAG and spec.beta != LEAD_LAG_BETA:
        return f"{listed} (planted lead-lag beta {spec.beta:g})"
    return listed


def symbol_seed(symbol: str) -> int:
    """A seed stable across processes and machines (``hash()`` is salted per process)."""
    return zlib.crc32(symbol.encode("ascii"))


def _generator(symbol: str, seed: int | None, block: int = 0) -> np.random.Generator:
    """The symbol's generator: crc32 of its name, mixed with the URI's seed when there is one,
    and with the block number for the blocks after the first (whose draws stay as they were)."""
    if block == 0:
        if seed is None:
            return np.random.default_rng(symbol_seed(symbol))
        return np.random.default_rng([seed, symbol_seed(symbol)])
    return np.random.default_rng([symbol_seed(symbol), block] + ([] if seed is None else [seed]))


def garch_returns(shocks: np.ndarray, hourly_vol: float) -> tuple[np.ndarray, np.ndarray]:
    """(log returns, conditional vol) of GARCH(1,1) driven by standard normal ``shocks``.

    ``omega`` is set so that the long-run variance is ``hourly_vol**2``:
    ``omega = v * (1 - alpha - beta)``. The recursion is sequential by nature.
    """
    omega = hourly_vol**2 * (1 - _GARCH_ALPHA - _GARCH_BETA)
    returns = np.empty_like(shocks)
    vols = np.empty_like(shocks)
    h = hourly_vol**2
    for t, z in enumerate(shocks.tolist()):
        vol = math.sqrt(h)
        eps = vol * z
        returns[t] = eps
        vols[t] = vol
        h = omega + _GARCH_ALPHA * eps * eps + _GARCH_BETA * h
    return returns, vols


def _log_returns(
    symbol: str, rng: np.random.Generator, n: int, spec: SyntheticSpec, block: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(bar log returns, conditional vol) of ``symbol`` in the market of ``spec``, one block."""
    _, hourly_vol, rho = symbol_params(symbol)
    shocks = rng.standard_normal(n)
    if symbol == LEADER:
        return garch_returns(shocks, hourly_vol)
    btc_shocks = _generator(LEADER, spec.seed, block).standard_normal(n)
    if spec.kind == RANDOM_WALK:
        shocks *= math.sqrt(1.0 - rho * rho)
        shocks += rho * btc_shocks
        return garch_returns(shocks, hourly_vol)
    # Planted lead-lag: own noise independent of BTC, plus beta times BTC's previous bar.
    btc_vol = _PARAMS[LEADER][1]
    own_variance = hourly_vol**2 - (spec.beta * btc_vol) ** 2
    own_vol = max(math.sqrt(max(own_variance, 0.0)), MIN_OWN_VOL_SHARE * hourly_vol)
    returns, vols = garch_returns(shocks, own_vol)
    btc_returns, _ = garch_returns(btc_shocks, btc_vol)
    returns[1:] += spec.beta * btc_returns[:-1]
    return returns, vols


def synthetic_ohlcv(
    symbol: str, *, spec: SyntheticSpec | None = None, until: pd.Timestamp | None = None
) -> pd.DataFrame:
    """The deterministic synthetic history of ``symbol`` (see the module docstring).

    :param until: extend the history by whole blocks of :data:`SYNTHETIC_BLOCK` until it covers
        this time (default: the first block alone). A block never changes once generated: the
        first is the same at any ``until``, and block k is drawn from its own generator.
    """
    spec = spec or SyntheticSpec()
    if symbol not in spec.symbols:
        raise SyntheticDataError(f"no synthetic data for symbol {symbol}: the synthetic market has {describe(spec)}")
    blocks = [_block(symbol, spec, 0, first_price=symbol_params(symbol)[0])]
    while until is not None and blocks[-1].index[-1] < until:
        # the price goes on from the previous block's last close (the GARCH state restarts)
        blocks.append(_block(symbol, spec, len(blocks), first_price=float(blocks[-1]["close"].iloc[-1])))
    return blocks[0] if len(blocks) == 1 else pd.concat(blocks)


def _block(symbol: str, spec: SyntheticSpec, block: int, *, first_price: float) -> pd.DataFrame:
    """Block ``block`` of the history: hourly bars from SYNTHETIC_START + block * SYNTHETIC_BLOCK."""
    start = SYNTHETIC_START + block * SYNTHETIC_BLOCK
    index = pd.date_range(start, start + SYNTHETIC_BLOCK, freq="h", inclusive="left", name="timestamp")
    n = len(index)
    rng = _generator(symbol, spec.seed, block)
    returns, vols = _log_returns(symbol, rng, n, spec, block)  # driftless log price: the median stays put
    close = first_price * np.exp(np.cumsum(returns))
    open_ = np.empty(n)
    open_[0] = first_price
    open_[1:] = close[:-1]
    # Intrabar excursions scale with the bar's conditional volatility.
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * vols * 0.6)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * vols * 0.6)
    # Volume rises with the size of the move (the volume-volatility relation).
    volume = 1e6 / symbol_params(symbol)[0] * np.exp(rng.normal(0.0, 0.4, n) + 40.0 * np.abs(returns))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)
