"""Run a function over items on a thread pool, stopping early on the first failure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_all(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """Results in input order. On the first error (or SIGTERM raised in the main thread) queued
    items are cancelled, so a failing build stops within one in-flight item, not after all of them."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
