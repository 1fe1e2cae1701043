"""Missing system tools and data: a skip on a developer machine, a failure under CI (where they must be there)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
from harness import Unavailable


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it when CI is set: CI must never skip tests quietly."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def skip_if_unavailable() -> Iterator[None]:
    """Turn a harness Unavailable raised in the block into skip_or_fail."""
    try:
        yield
    except Unavailable as e:
        skip_or_fail(str(e))
