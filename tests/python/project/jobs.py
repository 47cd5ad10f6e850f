"""Ordinary functions the Python SDK tests send to the node."""

import os
import sys
import time


def add(a, b):
    return a + b


def echo(payload):
    return payload


def greet(name, punctuation="!"):
    print(f"hello {name}")
    print("warning on stderr", file=sys.stderr)
    return f"hi {name}{punctuation}"


def boom():
    raise KeyError("missing-key")


def ticker(count, interval):
    for i in range(count):
        print(f"tick {i}", flush=True)
        time.sleep(interval)
    return count


def sleepy(seconds):
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return seconds


def noop():
    return None
