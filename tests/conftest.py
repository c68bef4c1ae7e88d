import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# The tests use tiny nets, for which one thread is fastest and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture
def private_data_one_thread(tmp_path_factory, monkeypatch):
    """A private GNOPT_DATA folder and one torch thread for command-line tests."""
    monkeypatch.setenv("GNOPT_DATA", str(tmp_path_factory.mktemp("data")))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
