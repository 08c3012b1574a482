"""Child processes: started so that they never outlive us, stopped so that none lingers."""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM):
    """In a child, before exec: have Linux send signum when the parent dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def killed_with_parent():
    """die_with_parent with SIGKILL: for children that may hang in a graceful shutdown."""
    die_with_parent(signal.SIGKILL)


def stop_processes(
    processes: list[subprocess.Popen],
    timeout: float,
    signum: int = signal.SIGTERM,
    group: bool = False,
):
    """Send signum to each (to its whole process group, with group), wait up to timeout
    for all of them together, then SIGKILL whatever is left."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(process.pid, signum)
                else:
                    process.send_signal(signum)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            process.kill()
        if group:  # the leader may be gone while the rest of its group lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_http(
    url: str,
    process: subprocess.Popen,
    timeout: float,
    also: Callable[[], bool] = lambda: True,
):
    """Poll url until it answers (and `also` holds), failing early if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                if also():
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)
