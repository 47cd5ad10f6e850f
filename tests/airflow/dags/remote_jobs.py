"""Ordinary functions the provider tests run on the node."""

import os
import time


def noop():
    return None


def sleepy(seconds):
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return seconds


def fail_on_first_call(marker):
    """Raises the first time (leaving ``marker`` behind), succeeds after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first call fails on purpose")
    print("second call succeeds")
    return "recovered"
