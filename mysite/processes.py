"""Child processes that never outlive the process that started them."""

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM):
    """In a child, before exec: have Linux send signum when the parent dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def killed_with_parent():
    """die_with_parent with SIGKILL: for children that may hang in a graceful shutdown."""
    die_with_parent(signal.SIGKILL)
