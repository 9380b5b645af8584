"""The pod's cpus put to work: cryptos evaluated side by side in worker processes.

The fits are numpy code that holds the GIL for much of its time, so threads would not spread it
over the cpus; processes do. Each worker builds one crypto's feature store, evaluates its folds
and sends the results (a few KiB per key) back; the parent alone writes to the database, so one
connection keeps the record of what persisted, and the retry and failure paths stay the same as
in a sequential run. A pod's peak is then about the parent plus ``workers`` crypto stores.

Workers are forked: they inherit the checked plan and the imported modules instead of
re-importing and unpickling them (``fork`` is the POSIX default up to Python 3.13; the pod runs
3.11 on Linux). How many: ``FINETUNE_POD_WORKERS``, else the container's cpu request, which the
pod spec passes down (``FINETUNE_CPU_REQUEST``, the downward API's ``requests.cpu`` in whole cpus,
rounded up), else 1; never more than the cryptos to run.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

WORKERS_ENV = "FINETUNE_POD_WORKERS"
# BLAS threads per process of the pod. OpenBLAS starts one thread per cpu of the *node* (64 on a
# large one, whatever the pod requested), and its threads spin while they wait: on the 2-core
# test machine, under load, 2 BLAS threads made a 1-worker n_features run 1.8x slower than 1
# (benchmarks/bench_scale.py, README). The pod's parallelism is its worker processes.
BLAS_THREADS = 1
CPU_REQUEST_ENV = "FINETUNE_CPU_REQUEST"


class WorkerDied(RuntimeError):
    """A worker process ended without its results (killed: most often by the memory limit)."""


def pod_workers(environ: Mapping[str, str]) -> int:
    """Worker processes the pod may run: ``FINETUNE_POD_WORKERS``, else its cpu request, else 1.

    :raises ValueError: ``FINETUNE_POD_WORKERS`` is set to anything but an integer >= 1 (one line).
    """
    configured = environ.get(WORKERS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"{WORKERS_ENV} must be an integer >= 1, got {configured!r}")
        return int(configured)
    # The downward API writes requests.cpu rounded up to whole cpus (divisor 1); a missing or odd
    # value means nobody said: one worker, as before workers existed.
    cpu = environ.get(CPU_REQUEST_ENV, "").strip()
    return int(cpu) if cpu.isdigit() and int(cpu) >= 1 else 1


# The work of the forked workers, set by the initializer: inherited through fork, never pickled.
_work: Callable[[str], Iterator[Any]] | None = None


def limit_blas_threads() -> None:
    """One BLAS thread in this process (and the workers it forks): see :data:`BLAS_THREADS`.

    threadpoolctl (from scikit-learn's authors) finds the BLAS that numpy loaded and sets its
    thread count through that library's own API, which an environment variable set after the
    import could no longer do.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=BLAS_THREADS, user_api="blas")


def _start_worker(work: Callable[[str], Iterator[Any]]) -> None:
    global _work
    _work = work
    limit_blas_threads()
    # The parent handles SIGTERM (it records the factor as failed); a worker reached by it (a
    # process-group signal) just ends. Ctrl-C is the parent's to handle, too.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_work(item: str) -> list[Any]:
    assert _work is not None, "the worker was started without its work"
    return list(_work(item))


def map_items(work: Callable[[str], Iterator[Any]], items: Sequence[str], *, workers: int) -> Iterator[Any]:
    """What ``work(item)`` yields for every item: in this process one item after the other when
    ``workers`` is 1 (each result as soon as it exists), else in ``workers`` forked processes,
    an item's results together as soon as that item is done (in order of completion).

    Close the iterator (``contextlib.closing``) when the consumer may stop early: the workers are
    then killed at once, not left computing for a run that has ended.

    :raises WorkerDied: a worker process died (its item's results are lost).
    """
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield from work(item)
        return
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(items)), mp_context=context, initializer=_start_worker, initargs=(work,)
    )
    finished = False
    try:
        futures = [pool.submit(_run_work, item) for item in items]
        for future in as_completed(futures):
            try:
                results = future.result()
            except BrokenProcessPool as exc:
                raise WorkerDied(
                    f"a worker process died before returning its results ({exc}); "
                    "the memory limit's kill is the usual cause"
                ) from exc
            yield from results
        finished = True
    finally:
        if not finished:
            for child in multiprocessing.active_children():
                child.kill()
        pool.shutdown(wait=True, cancel_futures=True)
