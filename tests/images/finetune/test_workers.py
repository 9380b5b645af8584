"""Worker processes of the pod: how many, results as in one process, a dead worker named, none left behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import closing

import pytest

from finetune.workers import CPU_REQUEST_ENV, WORKERS_ENV, WorkerDied, map_items, pod_workers


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, 1, id="nothing-said"),
        pytest.param({CPU_REQUEST_ENV: "2"}, 2, id="cpu-request"),
        pytest.param({CPU_REQUEST_ENV: "0"}, 1, id="no-cpu-request"),
        pytest.param({CPU_REQUEST_ENV: "2", WORKERS_ENV: "3"}, 3, id="setting-wins"),
        pytest.param({WORKERS_ENV: " 1 "}, 1, id="spaces"),
    ],
)
def test_the_worker_count_comes_from_the_setting_else_the_cpu_request(environ: dict, expected: int) -> None:
    assert pod_workers(environ) == expected


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_a_bad_worker_setting_is_one_line_naming_it(value: str) -> None:
    with pytest.raises(ValueError, match=rf"^{WORKERS_ENV} must be an integer >= 1, got '{value}'$"):
        pod_workers({WORKERS_ENV: value})


def _squares(item: str) -> Iterator[tuple[str, int, int]]:
    for k in range(3):
        yield item, k, len(item) ** 2 + k


def test_workers_give_every_result_of_one_process() -> None:
    items = ["a", "bb", "ccc", "dddd"]
    sequential = list(map_items(_squares, items, workers=1))
    assert sequential == [(item, k, len(item) ** 2 + k) for item in items for k in range(3)]

    parallel = list(map_items(_squares, items, workers=2))
    assert sorted(parallel) == sorted(sequential)
    # an item's results come together and in their own order
    for item in items:
        assert [k for name, k, _ in parallel if name == item] == [0, 1, 2]
    assert multiprocessing.active_children() == []


def _dies_on_c(item: str) -> Iterator[str]:
    if item == "c":
        os.kill(os.getpid(), signal.SIGKILL)  # what the memory limit's OOM kill does
    yield item


def test_a_worker_killed_mid_item_is_named() -> None:
    with pytest.raises(WorkerDied, match="a worker process died before returning its results"):
        list(map_items(_dies_on_c, ["a", "b", "c", "d"], workers=2))
    assert multiprocessing.active_children() == []


def _slow(item: str) -> Iterator[str]:
    if item != "fast":
        signal.pause()  # never ends by itself: only killing the worker stops it
    yield item


def test_a_consumer_that_stops_leaves_no_worker_behind() -> None:
    results = map_items(_slow, ["fast", "slow", "slower"], workers=2)
    with closing(results):
        assert next(results) == "fast"
    assert multiprocessing.active_children() == []


def test_the_pod_runs_one_blas_thread_per_process() -> None:
    import numpy  # noqa: F401 - loads the BLAS whose threads are counted
    from threadpoolctl import threadpool_info, threadpool_limits

    from finetune.workers import BLAS_THREADS, limit_blas_threads

    with threadpool_limits(limits=2, user_api="blas"):  # restored after the test
        limit_blas_threads()
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {BLAS_THREADS}
