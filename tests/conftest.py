import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    """Tiny tensors on a 2-core CI machine: one thread avoids synchronisation overhead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
