"""Shared by the study tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # these models and batches are tiny: a second OpenMP thread only adds barrier waits, which
    # grow to seconds per evaluation when other processes share the 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
