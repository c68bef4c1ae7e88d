import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

# The tests use tiny nets, for which one thread is fastest and immune to a busy machine.
torch.set_num_threads(1)
