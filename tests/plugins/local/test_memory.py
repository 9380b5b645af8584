"""The local backend's memory enforcement: the kernel's peak through the launcher, the watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from finetune_sweep.local.memory import KernelPeak, Watchdog

MIB = 2**20


def _run_with_kernel_peak(code: str) -> tuple[int, int | None]:
    peak = KernelPeak()
    process = subprocess.Popen(
        peak.argv([sys.executable, "-c", code], python=sys.executable),
        pass_fds=(peak.write_fd,),
        start_new_session=True,
    )
    peak.started()
    returncode = process.wait()
    return returncode, peak.read()


def test_kernel_peak_is_the_containers_own_not_the_parents() -> None:
    # This process holds 300 MiB: a child forked straight from it reports (at least) that as
    # its ru_maxrss; through the launcher the figure is the child's own.
    ballast = b"b" * (300 * MIB)

    returncode, peak = _run_with_kernel_peak("x = b'x' * (8 * 2**20)")

    assert len(ballast) == 300 * MIB
    assert returncode == 0
    assert peak is not None
    assert 8 * MIB <= peak < 64 * MIB


def test_kernel_peak_sees_a_peak_that_was_freed_before_exit() -> None:
    returncode, peak = _run_with_kernel_peak("x = b'x' * (100 * 2**20); del x; y = b'y' * 2**20")

    assert returncode == 0
    assert peak is not None and peak >= 100 * MIB


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param("import sys; sys.exit(3)", 3, id="exit-code"),
        pytest.param("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM, id="sigterm"),
        pytest.param("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, id="sigkill"),
    ],
)
def test_launcher_exits_as_the_container_did(code: str, expected: int) -> None:
    returncode, peak = _run_with_kernel_peak(code)

    assert returncode == expected
    assert peak is not None and peak > 0


def test_launcher_outlives_a_stop_signal_to_the_group_and_still_reports() -> None:
    peak = KernelPeak()
    process = subprocess.Popen(
        peak.argv(
            [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(30)"],
            python=sys.executable,
        ),
        pass_fds=(peak.write_fd,),
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    peak.started()
    assert process.stdout is not None
    assert process.stdout.readline() == b"up\n"

    os.killpg(process.pid, signal.SIGTERM)

    assert process.wait() == -signal.SIGTERM
    assert peak.read() is not None


def test_launcher_reports_a_command_that_cannot_start() -> None:
    peak = KernelPeak()
    process = subprocess.Popen(
        peak.argv(["/nonexistent/binary"], python=sys.executable),
        pass_fds=(peak.write_fd,),
        stderr=subprocess.PIPE,
    )
    peak.started()
    _, err = process.communicate()

    assert process.returncode == 127
    assert b"exec /nonexistent/binary" in err
    peak.read()


def test_watchdog_skipping_the_root_kills_only_the_container() -> None:
    # the root (a shell standing in for the launcher) survives and reports how its child died
    code = "x = b'x' * (128 * 2**20); import time; time.sleep(30)"
    process = subprocess.Popen(
        ["/bin/sh", "-c", '"$0" -c "$1"; echo "child exit $?"', sys.executable, code],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    watchdog = Watchdog(process.pid, limit=64 * MIB, skip_root=True)
    watchdog.start()
    out, _ = process.communicate(timeout=60)
    watchdog.stop()
    watchdog.join()

    assert watchdog.killed
    assert out.strip() == b"child exit 137"
    assert watchdog.peak > 64 * MIB


def test_a_stop_signal_before_the_container_exists_still_reaches_it() -> None:
    # A deadline can fire while a busy machine is still starting the launcher: the signal must not
    # be lost (the container would then run on). Stand-in: the launcher is signalled before it
    # forks, by delaying its start with a wrapper that signals the group first.
    peak = KernelPeak()
    launcher = peak.argv([sys.executable, "-c", "import time; time.sleep(30)"], python=sys.executable)
    # the launcher code runs after `import os, signal, sys`; prepend a SIGTERM to itself that
    # arrives once its handlers are set but before the fork
    code = launcher[4].replace("pid = os.fork()", "os.kill(os.getpid(), signal.SIGTERM)\npid = os.fork()", 1)
    assert code != launcher[4]
    process = subprocess.Popen([*launcher[:4], code, *launcher[5:]], pass_fds=(peak.write_fd,))
    peak.started()

    assert process.wait(timeout=60) == -signal.SIGTERM
    assert peak.read() is not None
