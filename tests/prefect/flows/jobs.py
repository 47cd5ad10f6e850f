"""Ordinary functions the Prefect tests run on the node."""

import os
import time


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


def greet(name):
    print(f"hello {name} from the node", flush=True)
    return {"greeting": f"hello {name}"}


def wait_for(path, limit=300):
    """Runs until ``path`` exists (the test creates it when it is ready to let the call finish)."""
    print(f"pid {os.getpid()}", flush=True)
    deadline = time.time() + limit
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return "released"


def noop():
    return None


class Counter:
    """State that lives between tasks and flows."""

    def __init__(self, start=0):
        self.count = start
        print(f"counter starts at {start}", flush=True)

    def add(self, by=1):
        self.count += by
        print(f"count is {self.count}", flush=True)
        return self.count
