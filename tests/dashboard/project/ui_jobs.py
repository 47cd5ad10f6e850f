"""Functions the dashboard tests run on the local stack."""

import os
import sys
import time


def ticker(n: int, every: float) -> int:
    """Prints `n` green lines, `every` seconds apart, each with the time it was printed."""
    for i in range(n):
        print(f"\x1b[32mtick {i}\x1b[0m printed_at={time.time():.6f}", flush=True)
        time.sleep(every)
    return n


def progress(n: int) -> str:
    """A progress bar that rewrites one line with carriage returns, as tqdm does."""
    for i in range(n + 1):
        sys.stderr.write(f"\rprogress {i}/{n}")
        sys.stderr.flush()
        time.sleep(0.01)
    sys.stderr.write("\n")
    return "done"


def boom() -> None:
    raise ValueError("the data had no rows")


def sleeper(pid_file: str) -> None:
    """Writes its pid, then sleeps until it is killed."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(600)


def hostile() -> dict:
    """Output and a result that would run script if a page rendered them as markup."""
    print("<script>alert('log')</script>", flush=True)
    print('<img src=x onerror="alert(\'img\')">', flush=True)
    return {"html": "<script>alert('result')</script>"}
