"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads that spin-wait for each
    other can run an order of magnitude slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
