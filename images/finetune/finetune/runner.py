"""One factor's run inside its pod: fine-tune per (crypto, fold), evaluate and baseline per cost basis.

Phases, in this order, so that a refused run writes nothing:

1. :func:`prepare` checks every crypto's data and places its folds, without building feature
   stores (the warm-up is found on a prefix of the bars). Any problem (a factor or model that is
   not installed or cannot be imported, a factor plug-in that breaks its interface on that
   prefix, missing or malformed data, as-of before the data, too few bars for a fold) raises
   :class:`InputError` before the database is touched.
2. :func:`execute` registers the run, marks the factor ``running`` and runs crypto after crypto,
   each one's feature store built and released in turn (memory flat in the crypto count), in up
   to ``workers`` processes side by side (:mod:`finetune.workers`; only the pod's own process
   writes). :func:`evaluate_fold` fine-tunes once per (crypto, fold) and computes, on the fold's test
   window, the random seeds, the timing test and the shifted copies once for all cost bases (none
   depends on the cost; the trades are netted per cost basis), then per cost basis the model's
   metrics, its significance (random and matched percentiles, timing and profit p-values,
   exposure, positions) and the three baselines; each key persists as one transaction on one
   window.
3. It then asks the database which planned keys are complete. A missing key emits
   ``baselines_incomplete`` and fails the run; the outcome, peak memory and limit are recorded on
   the manifest and in the per-attempt history. A run that crashes, is stopped (SIGTERM) or loses
   the database on the way reports the keys it never persisted from its own record, since the
   database may not answer, and is recorded ``failed`` on a fresh connection. A plug-in that
   breaks its interface mid-run (:class:`~finetune.plugins.PluginError`: a model's fit or
   positions, a factor beyond the probed prefix) takes the same path and exits 2: rerunning the
   same code cannot help.

Model rows carry ``variant = "default"``: the runner sweeps no ablation, and the cost basis has
its own columns in the key, so a cost-named variant would only repeat them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from finetune import baselines, significance
from finetune.bars import BarOptions, Gap
from finetune.baselines import BASELINE_TYPES, BaselineResult
from finetune.connection import DatabaseSettings, DatabaseTimeout, DatabaseUnavailable, RetryNotice
from finetune.costs import round_trip_cost
from finetune.data import DataError, MarketData
from finetune.events import EventLog, print_error
from finetune.factors import BTC, Build, BuiltinFactor, FeatureStore, build_feature_store, warmup_rows
from finetune.folds import Fold, walk_forward_folds
from finetune.model import BARS_PER_YEAR, evaluate, training_rows
from finetune.persistence import ModelRow, ResultKey, Store, Window, dsn_password, error_line, keys_as_dicts
from finetune.plugins import DEFAULT_MODEL, Model, PluginError, load_factor, load_model
from finetune.stopping import Terminated
from finetune.usage import measure_usage
from finetune.workers import map_items

VARIANT = "default"

EXIT_OK = 0
EXIT_FAILED = 1  # the run started (or the database refused it) and did not complete
EXIT_USAGE = 2  # refused before any write: bad arguments, configuration or input data


class InputError(ValueError):
    """Inputs that cannot make a run (exit 2, nothing written); the message is one line."""


# After a SIGTERM the kubelet sends SIGKILL when the grace period ends (30 s unless the pod says
# otherwise): the failure record gets this long for its timeouts and retries, so that it lands.
TERMINATION_RECORD_SECONDS = 10.0


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread.

    Later ones are ignored: the run is already stopping, and a second exception raised inside
    the cancel or the failure record would only lose that record.
    """

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class RunConfig:
    """The validated arguments of ``python -m finetune run`` (DESIGN 4.1)."""

    run_id: str
    factor: str
    cryptos: tuple[str, ...]
    cost_bps: tuple[int, ...]
    slippage_bps: tuple[int, ...]
    as_of: pd.Timestamp
    n_folds: int
    n_seeds: int
    hold_bars: int
    train_bars: int
    test_bars: int
    data_uri: str | None
    bars: BarOptions = BarOptions()  # how the data's rows become calendar bars (--gaps & co.)
    # Sign flips per model in the timing test, bootstrap resamples per cost basis in the profit
    # test (--n-shifts): independent of n_seeds, so that the p-value floor is the user's.
    n_shifts: int = significance.DEFAULT_N_SHIFTS
    # The model plug-in (--model): every row's strategy.
    model: str = DEFAULT_MODEL

    @property
    def cost_bases(self) -> list[tuple[int, int]]:
        """Every (cost_bps, slippage_bps) pair of the grid."""
        return [(cost, slip) for cost in self.cost_bps for slip in self.slippage_bps]

    def params(self) -> dict[str, Any]:
        """The arguments as stored in ``finetune_runs.params``."""
        params = asdict(self)
        params["cryptos"] = list(self.cryptos)
        params["cost_bps"] = list(self.cost_bps)
        params["slippage_bps"] = list(self.slippage_bps)
        params["as_of"] = self.as_of.isoformat()
        params["bars"] = self.bars.as_json()
        return params


@dataclass(frozen=True)
class PodContext:
    """What the pod spec tells the runner beyond its arguments (INTERNALS: pod-side environment)."""

    attempt: int
    profile: str | None
    environ: Mapping[str, str]
    # The Airflow run that started the pod ('' outside Airflow): part of the attempt history's key.
    airflow_run_id: str = ""
    # When the pod's work began (time.monotonic), so that pod_usage's seconds include the loading.
    started: float = field(default_factory=time.monotonic)
    # Statement/lock timeouts and the retry budget of the pod's connections (FINETUNE_DB_*).
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    # Worker processes the pod may run (finetune.workers.pod_workers): at most one per crypto.
    workers: int = 1


@dataclass
class Prepared:
    """One crypto, ready to run: its features, its folds, and its bars' calendar."""

    store: FeatureStore
    folds: list[Fold]
    # True where a bar the features of store.index[i] read was filled by --gaps fill (the
    # crypto's, and BTC's for btc_features; counted per test window); None: n_filled_bars NULL.
    filled: np.ndarray | None = None
    # Bars of the data's interval in a year: the Sharpe ratio's annualisation.
    bars_per_year: float = BARS_PER_YEAR
    # sigma[t] per feature row, the EWMA volatility known at the row's bar (over the whole history,
    # so that a test window's first bars have one): the timing test's scale.
    volatility: np.ndarray | None = None

    def n_filled_bars(self, fold: Fold) -> int | None:
        """How many bars of the fold's test window were filled."""
        return None if self.filled is None else int(self.filled[fold.test_start : fold.test_end].sum())


def _feature_symbols(config: RunConfig, crypto: str) -> list[str]:
    """The symbols whose bars ``crypto``'s features read: its own, and BTC's for btc_features."""
    return [crypto] + ([BTC] if config.factor == "btc_features" and crypto != BTC else [])


def _release_bars(config: RunConfig, market: MarketData, crypto: str) -> None:
    """Drop ``crypto``'s bars from the market's cache, unless other cryptos' features read them
    (BTC for btc_features: one symbol's bars kept for the whole run, whatever the crypto count)."""
    if not (config.factor == "btc_features" and crypto == BTC):
        market.release(crypto)


def _unfilled_gap(market: MarketData, config: RunConfig, crypto: str) -> tuple[str, Gap] | None:
    """The newest unfilled gap in the bars ``crypto``'s features read (BTC's too for btc_features).

    The bars start after such a gap (:mod:`finetune.bars`), so when the folds then lack bars, the
    span the run uses reached across it: the gap is the cause to report.
    """
    found = []
    for symbol in _feature_symbols(config, crypto):
        try:
            gap = market.calendar(symbol, as_of=config.as_of).unfilled_gap
        except DataError:
            return None  # the bars themselves were refused: that error is the cause
        if gap is not None:
            found.append((symbol, gap))
    return max(found, key=lambda item: item[1].after, default=None)


def _gap_message(crypto: str, symbol: str, gap: Gap, config: RunConfig, cause: str) -> str:
    whose = "" if symbol == crypto else f"{symbol} (read by {config.factor}) has "
    allowed = f"--max-gap-bars {config.bars.max_gap_bars}" if config.bars.gaps == "fill" else "--gaps refuse"
    cause = cause.removeprefix(f"symbol {crypto}: ")
    return (
        f"symbol {crypto}: {whose}{gap.describe()} inside the span the run uses ({allowed}); "
        f"the bars after it are too few: {cause}"
    )


@dataclass(frozen=True)
class CryptoPlan:
    """One crypto as the checks found it, before its features exist: its folds and their windows."""

    crypto: str
    folds: tuple[Fold, ...]
    windows: Mapping[int, Window]  # each fold's test window, by fold_id
    bars_per_year: float


def _check_crypto(config: RunConfig, market: MarketData, crypto: str, build: Build | None = None) -> CryptoPlan:
    """The crypto's bars (calendar, gaps, staleness), warm-up and folds, or :class:`InputError`.

    Only the bars and a short prefix of the features are computed (:func:`warmup_rows`), so every
    crypto can be checked before the first write without holding any feature store.
    """
    try:
        bars = market.ohlcv(crypto, as_of=config.as_of)
        warmup = warmup_rows(config.factor, crypto, market, as_of=config.as_of, build=build, symbols=config.cryptos)
        index = bars.index[warmup:]
        folds = walk_forward_folds(
            index,
            as_of=config.as_of,
            n_folds=config.n_folds,
            train_bars=config.train_bars,
            test_bars=config.test_bars,
            hold_bars=config.hold_bars,
        )
    except PluginError as exc:  # names the factor and the symbol already
        raise InputError(str(exc)) from exc
    except ValueError as exc:
        # DataError, FoldError and pandas' parser errors are all ValueErrors: at this stage
        # each one means the inputs cannot make a run. Fold messages do not know the symbol.
        message = error_line(exc)
        gap = _unfilled_gap(market, config, crypto)
        if gap is not None:
            raise InputError(_gap_message(crypto, *gap, config, message)) from exc
        raise InputError(message if crypto in message else f"symbol {crypto}: {message}") from exc
    return CryptoPlan(
        crypto=crypto,
        folds=tuple(folds),
        windows={fold.fold_id: test_window(index, fold) for fold in folds},
        bars_per_year=market.calendar(crypto, as_of=config.as_of).bars_per_year,
    )


class Plan:
    r"""The checked inputs of one pod: every crypto's folds and windows, and the market that each
    crypto's features are built from when its turn comes.

    Memory stays flat in the number of cryptos: the checks keep only folds and windows, and
    :meth:`load` builds one crypto's store, which the caller drops (and :meth:`release`\ s) before
    the next. A symbol that other cryptos' features read (BTC for btc_features) keeps its bars
    for the whole run: one symbol's, whatever the crypto count.
    """

    def __init__(
        self,
        config: RunConfig,
        market: MarketData,
        cryptos: Mapping[str, CryptoPlan],
        *,
        build: Build | None = None,
        model: Model | None = None,
    ) -> None:
        self.config = config
        self.market = market
        self.cryptos = dict(cryptos)
        self.build = build  # the factor plug-in (None: the built-in of config.factor)
        self.model = model or load_model(config.model)

    def planned_windows(self) -> dict[ResultKey, Window]:
        """Every key of the pod's grid with the window its rows must sit on."""
        return {
            ResultKey(crypto, fold.fold_id, cost, slip): plan.windows[fold.fold_id]
            for crypto, plan in self.cryptos.items()
            for fold in plan.folds
            for cost, slip in self.config.cost_bases
        }

    def load(self, crypto: str) -> Prepared:
        """``crypto``'s feature store, folds and filled bars.

        :raises RuntimeError: the store's folds are not the checked ones (a factor whose warm-up
            on the whole history differs from the one its prefix showed: not a trailing one).
        """
        config, plan = self.config, self.cryptos[crypto]
        store = build_feature_store(
            config.factor, crypto, self.market, as_of=config.as_of, build=self.build, symbols=config.cryptos
        )
        windows = {fold.fold_id: test_window(store.index, fold) for fold in plan.folds}
        if windows != dict(plan.windows):
            plugin = self.build is not None and not isinstance(self.build, BuiltinFactor)
            raise (PluginError if plugin else RuntimeError)(
                f"factor {config.factor} on {crypto}: the feature rows differ from the ones checked before the run "
                "(a feature that is not a trailing computation of past bars?)"
            )
        # A bar counts as filled when any bar its features read was: BTC's too for btc_features.
        filled = np.zeros(len(store.index), dtype=bool)
        for symbol in _feature_symbols(config, crypto):
            bars = self.market.ohlcv(symbol, as_of=config.as_of)
            filled |= bars["filled"].reindex(store.index, fill_value=False).to_numpy(dtype=bool)
        # The volatility over every bar of the crypto, then cut to the feature rows: past-only.
        bars = self.market.ohlcv(crypto, as_of=config.as_of)
        volatility = significance.ewma_volatility(bars["close"].to_numpy(dtype=np.float64))
        volatility = volatility[bars.index.get_indexer(store.index)]
        return Prepared(
            store=store,
            folds=list(plan.folds),
            filled=filled,
            bars_per_year=plan.bars_per_year,
            volatility=volatility,
        )

    def release(self, crypto: str) -> None:
        """Drop ``crypto``'s bars from the market's cache (kept when other cryptos read them)."""
        _release_bars(self.config, self.market, crypto)

    def prepared(self) -> Iterator[tuple[str, Prepared]]:
        """Each crypto's :class:`Prepared`, one at a time; each is released when the next is asked."""
        for crypto in self.cryptos:
            yield crypto, self.load(crypto)
            self.release(crypto)


def _checked(
    config: RunConfig, market: MarketData, build: Build | None, crypto: str
) -> Iterator[tuple[str, CryptoPlan | InputError]]:
    """(crypto, its :class:`CryptoPlan` or the :class:`InputError` refusing it); the crypto's bars
    are released after the check (unless other cryptos read them)."""
    try:
        result: CryptoPlan | InputError = _check_crypto(config, market, crypto, build)
    except InputError as exc:
        result = exc
    finally:
        _release_bars(config, market, crypto)
    yield crypto, result


def prepare(config: RunConfig, *, workers: int = 1) -> Plan:
    """Every crypto's data checked and its folds placed, or :class:`InputError` naming the problem
    (the first refused crypto in the order given, whichever worker checked it first).

    Nothing is written and no feature store is held: :meth:`Plan.load` builds them one by one.
    The checks run in up to ``workers`` processes, as the run itself does.
    """
    try:
        # the plug-ins by name (finetune.plugins), before any data is read
        build, model = load_factor(config.factor), load_model(config.model)
        market = MarketData(config.data_uri, bars=config.bars)
    except ValueError as exc:
        raise InputError(error_line(exc)) from exc
    checked = dict(map_items(partial(_checked, config, market, build), config.cryptos, workers=workers))
    for crypto in config.cryptos:
        if isinstance(checked[crypto], InputError):
            raise checked[crypto]
    cryptos = {crypto: checked[crypto] for crypto in config.cryptos}
    return Plan(config, market, cryptos, build=build, model=model)


def _refuse_other_data(config: RunConfig, registered: Mapping[str, Any]) -> None:
    """One run holds rows of one data source: a pod reading other data under an existing run id
    would upsert over its rows (runs registered before the source was recorded are not checked).

    :raises InputError: the run was registered on other data (nothing written).
    """
    if "data_uri" not in registered or registered["data_uri"] == config.data_uri:
        return

    def shown(uri: str | None) -> str:
        return repr(uri) if uri is not None else "the built-in synthetic market"

    raise InputError(
        f"run {config.run_id} was registered on {shown(registered['data_uri'])}, this pod reads "
        f"{shown(config.data_uri)}: other data is another run (give it its own --run-id)"
    )


def test_window(index: pd.DatetimeIndex, fold: Fold) -> Window:
    """The fold's test window on the feature ``index``: first and last test bar (inclusive), bar count."""
    return Window(
        test_start=index[fold.test_start].to_pydatetime(),
        test_end=index[fold.test_end - 1].to_pydatetime(),
        n_bars=fold.test_end - fold.test_start,
    )


def _finite_or_none(value: float) -> float | None:
    """NaN/inf metrics (e.g. the Sharpe of a flat book) are stored as NULL, not as a number."""
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class KeyResult:
    """What one key persists: its model row and its three baselines (on the fold's window)."""

    key: ResultKey
    model: ModelRow
    baselines: tuple[BaselineResult, ...]


def evaluate_fold(
    crypto: str,
    item: Prepared,
    fold: Fold,
    *,
    cost_bases: list[tuple[int, int]],
    n_seeds: int,
    hold_bars: int,
    n_shifts: int = significance.DEFAULT_N_SHIFTS,
    model: Model | None = None,
) -> list[KeyResult]:
    """Fine-tune once on the fold, then the model row and baselines of every cost basis.

    No I/O: the power tests of the synthetic market call it directly. The timing test runs once
    for the model (it does not depend on the cost); the random seeds' entries, the shifted copies'
    trades and the bootstrap's resamples are drawn once for the window and netted per cost basis
    (one pass per window; a key-level memo would never be hit: each key is visited once).
    """
    window_bars = slice(fold.test_start, fold.test_end)
    close = item.store.close[window_bars]
    model, positions = fit_positions(model or load_model(DEFAULT_MODEL), item.store, fold, hold_bars=hold_bars)
    costs = {basis: round_trip_cost(*basis) for basis in cost_bases}
    distinct = list(dict.fromkeys(costs.values()))  # 10+0 and 5+5 bps are one round-trip cost
    window = baselines.compute_window_baselines(close, distinct, n_seeds=n_seeds, hold_bars=hold_bars)
    volatility = None if item.volatility is None else item.volatility[window_bars]
    timing = significance.shift_test(positions, close, n_shifts=n_shifts, volatility=volatility)
    offsets = significance.shift_offsets(close.size, n_shifts)
    matched = dict(zip(distinct, significance.matched_percentiles(positions, close, distinct, offsets), strict=True))
    profit = significance.profit_tests(positions, close, distinct, n_resamples=n_shifts, block_bars=hold_bars)
    profits = dict(zip(distinct, profit, strict=True))
    exposure = significance.exposure(positions)
    stored_positions = significance.position_list(positions)
    results = []
    for (cost, slip), rt in costs.items():
        metrics = evaluate(positions, close, rt, bars_per_year=item.bars_per_year)
        row = ModelRow(
            variant=VARIANT,
            model_hyperparams=dict(model.hyperparams),
            feature_hash=item.store.feature_hash,
            net_return=float(metrics.net_return),
            sharpe=_finite_or_none(metrics.sharpe),
            max_drawdown=_finite_or_none(metrics.max_drawdown),
            n_trades=int(metrics.n_trades),
            n_filled_bars=item.n_filled_bars(fold),
            exposure=exposure,
            positions=stored_positions,
            random_percentile=significance.random_percentile(float(metrics.net_return), window.seed_returns(rt)),
            perm_p_value=timing.p_value,
            perm_n_shifts=timing.n_shifts,
            matched_percentile=matched[rt],
            profit_p_value=profits[rt].p_value,
            profit_vs_buy_and_hold_p_value=profits[rt].p_value_vs_buy_and_hold,
            profit_n_resamples=profits[rt].n_resamples,
            bar_sharpe=profits[rt].bar_sharpe,
            bar_skewness=profits[rt].bar_skewness,
            bar_kurtosis=profits[rt].bar_kurtosis,
        )
        results.append(KeyResult(ResultKey(crypto, fold.fold_id, cost, slip), row, window.by_cost[rt]))
    return results


def fit_positions(model: Model, store: FeatureStore, fold: Fold, *, hold_bars: int) -> tuple[Any, np.ndarray]:
    """``model`` fitted on the fold's training rows, and its checked 0/1 positions on the test rows.

    :raises PluginError: the model raised or broke its interface (naming model, symbol and fold).
    """
    where = f"{store.symbol} fold {fold.fold_id}"
    features, labels, close = training_rows(store, fold, hold_bars=hold_bars)
    fitted = model.fit(features, labels, close=close, hold_bars=hold_bars, where=where)
    return fitted, model.positions(fitted, store.features[fold.test_start : fold.test_end], where=where)


def evaluate_crypto(plan: Plan, crypto: str) -> Iterator[tuple[str, Fold, list[KeyResult]]]:
    """Build ``crypto``'s store, then (crypto, fold, key results) for each of its folds.

    The store lives only while this generator runs (in the pod's process or a worker's), and the
    crypto's bars are released when it ends, so one crypto's data is held at a time.
    """
    config = plan.config
    try:
        item = plan.load(crypto)
        for fold in item.folds:
            results = evaluate_fold(
                crypto,
                item,
                fold,
                cost_bases=config.cost_bases,
                n_seeds=config.n_seeds,
                hold_bars=config.hold_bars,
                n_shifts=config.n_shifts,
                model=plan.model,
            )
            yield crypto, fold, results
    finally:
        plan.release(crypto)


class _Run:
    """The state of one execution: the store, the events, the planned windows."""

    def __init__(self, config: RunConfig, plan: Plan, store: Store, events: EventLog, *, workers: int) -> None:
        self.config = config
        self.plan = plan
        self.store = store
        self.events = events
        self.workers = workers
        self.planned = plan.planned_windows()

    def persist_fold(self, crypto: str, fold: Fold, results: list[KeyResult]) -> list[ResultKey]:
        """Persist every cost basis of the fold; returns the keys that failed to persist."""
        window = self.plan.cryptos[crypto].windows[fold.fold_id]
        failed = []
        for result in results:
            try:
                self.store.persist_key(
                    strategy=self.config.model,
                    key=result.key,
                    window=window,
                    model=result.model,
                    baselines=result.baselines,
                )
            except psycopg.OperationalError:
                raise  # the database is gone after the retries: no later key can persist either
            except psycopg.Error as exc:
                # A refused write (constraint, trigger) loses this key only: its transaction rolled
                # back, the others may still persist, and the completeness check reports it.
                failed.append(result.key)
                self.events.emit("persist_failed", key=result.key.as_dict(), error=error_line(exc, self.store.dsn))
        return failed

    def loop(self) -> None:
        n_folds = {crypto: len(plan.folds) for crypto, plan in self.plan.cryptos.items()}
        progress = Progress(n_pairs=sum(n_folds.values()), n_cryptos=len(n_folds))
        evaluated = map_items(partial(evaluate_crypto, self.plan), list(self.plan.cryptos), workers=self.workers)
        with closing(evaluated):
            for crypto, fold, results in evaluated:
                failed = self.persist_fold(crypto, fold, results)
                last_of_crypto = fold.fold_id == n_folds[crypto] - 1
                i = progress.fold_done(last_of_crypto=last_of_crypto)
                self.events.emit(
                    "fold_done",
                    i=i,
                    n=progress.n_pairs,
                    crypto=crypto,
                    fold_id=fold.fold_id,
                    keys=len(self.config.cost_bases),
                    failed=len(failed),
                )
                if last_of_crypto:  # from the first crypto on, the pace so far tells the time left
                    self.events.emit("progress", **progress.report())

    def missing_keys(self) -> list[ResultKey]:
        return self.store.incomplete_keys(
            strategy=self.config.model, variant=VARIANT, planned=self.planned, n_baseline_types=len(BASELINE_TYPES)
        )


class Progress:
    """Folds and cryptos done, and the time left at the pace so far (estimated once a crypto is done)."""

    def __init__(self, *, n_pairs: int, n_cryptos: int) -> None:
        self.n_pairs = n_pairs
        self.n_cryptos = n_cryptos
        self.pairs_done = 0
        self.cryptos_done = 0
        self.started = time.monotonic()

    def fold_done(self, *, last_of_crypto: bool) -> int:
        """Count one (crypto, fold); returns how many are done."""
        self.pairs_done += 1
        self.cryptos_done += last_of_crypto
        return self.pairs_done

    def report(self) -> dict[str, Any]:
        """The ``progress`` event's fields: what is done, the time so far and the estimated rest."""
        elapsed = time.monotonic() - self.started
        rest = elapsed / self.pairs_done * (self.n_pairs - self.pairs_done)
        return {
            "cryptos_done": self.cryptos_done,
            "n_cryptos": self.n_cryptos,
            "folds_done": self.pairs_done,
            "n_folds": self.n_pairs,
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": round(rest, 1),
        }


def execute(
    config: RunConfig,
    plan: Plan,
    *,
    dsn: str,
    pod: PodContext,
    events: EventLog | None = None,
) -> int:
    """Run the prepared grid against the database; returns the exit code.

    Any failure once the factor is ``running`` (an exception, SIGTERM, the database lost beyond
    the retry budget, a statement or lock timeout) emits ``run_error`` and
    ``baselines_incomplete`` with the keys this run never persisted, records the factor
    ``failed`` with the reason on a fresh connection, and prints one line on stderr.

    :raises persistence.DatabaseUnavailable: when the database cannot be reached at the start
        (:class:`~finetune.connection.DatabaseRefused` when it refuses the credentials).
    """
    events = events or EventLog(run_id=config.run_id, factor=config.factor, secrets=[dsn_password(dsn)])
    limit = measure_usage(pod.environ).memory_limit_bytes
    store = Store(
        dsn, run_id=config.run_id, factor=config.factor, settings=pod.database, on_retry=_retry_reporter(events, dsn)
    )
    with store:
        workers = min(pod.workers, len(plan.cryptos))
        run = _Run(config, plan, store, events, workers=workers)
        registered = store.register_run(
            strategy=config.model, as_of=config.as_of.to_pydatetime(), params=config.params(), dag_id=None
        )
        _refuse_other_data(config, registered)
        try:
            store.mark_running(attempt=pod.attempt, profile=pod.profile, memory_limit_bytes=limit)
            events.emit(
                "run_started",
                cryptos=list(config.cryptos),
                cost_bases=[list(basis) for basis in config.cost_bases],
                n_folds=config.n_folds,
                n_keys=len(run.planned),
                attempt=pod.attempt,
                profile=pod.profile,
                memory_limit_bytes=limit,
                workers=workers,
            )
            run.loop()
            missing = run.missing_keys()
        except Exception as exc:  # reported, recorded as the factor's failure, and exit 1
            exit_reason = failure_reason(exc, dsn)
            events.emit("run_error", error=exit_reason)
            # The database may be gone or locked: what this run committed is known without it.
            unpersisted = sorted(set(run.planned) - store.persisted_keys)
            _report_incomplete(events, unpersisted, n_keys=len(run.planned), checked_by="run")
            return _finish(
                store,
                events,
                pod,
                status="failed",
                exit_reason=exit_reason,
                workers=workers,
                terminated=isinstance(exc, Terminated),
                # a plug-in that broke its interface: no retry or bigger pod can fix it
                failed_code=EXIT_USAGE if isinstance(exc, PluginError) else EXIT_FAILED,
            )
        if missing:
            _report_incomplete(events, missing, n_keys=len(run.planned), checked_by="database")
            exit_reason = f"baselines_incomplete: {len(missing)} of {len(run.planned)} keys missing"
            return _finish(store, events, pod, status="failed", exit_reason=exit_reason, workers=workers)
        return _finish(store, events, pod, status="done", exit_reason="completed", workers=workers)


def failure_reason(exc: BaseException, dsn: str) -> str:
    """The factor's ``exit_reason`` for a run ended by ``exc``: one line, no secret."""
    if isinstance(exc, Terminated):
        return f"terminated: {exc}"
    if isinstance(exc, PluginError):
        return f"plug-in error: {error_line(exc, dsn)}"
    if isinstance(exc, DatabaseUnavailable | DatabaseTimeout):
        return error_line(exc, dsn)  # already says "database ..." and names the setting
    return f"error: {type(exc).__name__}: {error_line(exc, dsn)}"


def _retry_reporter(events: EventLog, dsn: str) -> Callable[[RetryNotice], None]:
    def report(notice: RetryNotice) -> None:
        events.emit(
            "database_retry",
            attempt=notice.attempt,
            delay_seconds=round(notice.delay, 3),
            error=error_line(notice.error, dsn),
        )

    return report


def _report_incomplete(events: EventLog, missing: Sequence[ResultKey], *, n_keys: int, checked_by: str) -> None:
    """``baselines_incomplete`` naming the keys; ``checked_by`` says who knew: database or run."""
    if missing:
        events.emit(
            "baselines_incomplete",
            missing=keys_as_dicts(missing),
            n_missing=len(missing),
            n_keys=n_keys,
            checked_by=checked_by,
        )


def _finish(
    store: Store,
    events: EventLog,
    pod: PodContext,
    *,
    status: str,
    exit_reason: str,
    workers: int,
    terminated: bool = False,
    failed_code: int = EXIT_FAILED,
) -> int:
    """Report usage, record the outcome, emit ``run_finished``; returns the exit code.

    A failure is recorded on a fresh connection (the run's may be broken or mid-statement), with
    the full retry budget, or within :data:`TERMINATION_RECORD_SECONDS` after a SIGTERM. If the
    record cannot be written, the pod still exits non-zero and the gate decides.
    """
    seconds = time.monotonic() - pod.started
    usage = measure_usage(pod.environ, workers=workers)
    events.emit(
        "pod_usage",
        peak_memory_bytes=usage.peak_memory_bytes,
        memory_limit_bytes=usage.memory_limit_bytes,
        seconds=round(seconds, 3),
        source=usage.source,
        workers=workers,
    )
    exit_code = EXIT_OK if status == "done" else failed_code
    record = partial(
        store.finish,
        status=status,
        attempt=pod.attempt,
        airflow_run_id=pod.airflow_run_id,
        profile=pod.profile,
        memory_limit_bytes=usage.memory_limit_bytes,
        peak_memory_bytes=usage.peak_memory_bytes,
        exit_reason=exit_reason,
        duration_seconds=seconds,
        workers=workers,
    )
    record_error = None
    try:
        try:
            if status != "done":
                store.close()
            record(within_seconds=TERMINATION_RECORD_SECONDS if terminated else None)
        except Terminated:
            # Stopped while recording (the handler ignores any further SIGTERM): record again,
            # quickly; a 'done' stays true, every key having persisted.
            record(within_seconds=TERMINATION_RECORD_SECONDS)
    except (psycopg.Error, DatabaseUnavailable, DatabaseTimeout) as exc:
        record_error = error_line(exc, store.dsn)
        # Without its 'done' the gate fails the run anyway; a failure already fails it.
        events.emit("record_failed", error=record_error, best_effort=status != "done")
        exit_code = EXIT_FAILED
    outcome = status if exit_code == EXIT_OK or status != "done" else "failed"
    events.emit("run_finished", status=outcome, exit_code=exit_code, exit_reason=exit_reason, seconds=round(seconds, 3))
    if status != "done":
        line = f"factor {store.factor} failed: {exit_reason}"
        print_error(line if record_error is None else f"{line}; the failure could not be recorded: {record_error}")
    elif record_error is not None:
        print_error(f"factor {store.factor} completed but could not be recorded: {record_error}")
    return exit_code
