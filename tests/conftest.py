"""Shared test configuration: hypothesis profiles, and one torch thread for tiny tensors.

"ci" is derandomized with no deadline and is chosen when the CI environment variable is set;
"dev" draws more examples for local runs. Override with HYPOTHESIS_PROFILE=<name>.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch's intra-op threads set to 1 for a module of tiny tensors, restored after: threads
    only cost time there (much of it on a loaded machine). torch is imported here, not above."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
