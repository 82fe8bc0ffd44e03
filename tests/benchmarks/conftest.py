import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """No timing is asserted here: one thread keeps these tests quick on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
