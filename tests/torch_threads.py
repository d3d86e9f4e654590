"""One torch thread for the torch test modules (``from torch_threads import one_torch_thread``).

Their tensors are tiny: torch's intra-op threads only cost time there (much of it on a loaded
machine). torch is imported inside the fixture, so importing this module needs no torch.
"""

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's intra-op threads set to 1 for the module, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
