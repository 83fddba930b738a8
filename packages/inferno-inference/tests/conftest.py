"""Shared fixtures of the engine's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernels run on the CPU through Triton's interpreter, which has to be chosen
    # before triton is first imported (it decorates its own library functions at import).
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP
    # barriers make every op wait for a busy core; restore the setting for other packages.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
