"""Shared test configuration: one BLAS thread, and the hypothesis profiles.

"ci" is derandomized with no deadline and is chosen when the CI environment variable is set;
"dev" draws more examples for local runs. Override with HYPOTHESIS_PROFILE=<name>.
"""

import os

from hypothesis import HealthCheck, settings

from minisage import runtime

# The test run owns its process, as the command line does: one BLAS thread (the small matrices
# here run fastest on one, and a fixed count keeps float32 sums in one order). Malloc is left
# alone: tests/test_runtime.py measures it.
runtime.tune_process(threads=1, keep_memory=False)

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
