import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """Compile into a private object cache so tests never depend on (or pollute) the user's."""
    old = os.environ.get("EMBEDPIPE_KERNEL_CACHE")
    os.environ["EMBEDPIPE_KERNEL_CACHE"] = str(tmp_path_factory.mktemp("kernels"))
    yield
    if old is None:
        os.environ.pop("EMBEDPIPE_KERNEL_CACHE", None)
    else:
        os.environ["EMBEDPIPE_KERNEL_CACHE"] = old
