import pytest

from tests.fuzz.campaign import prepare


@pytest.fixture(scope="session")
def fuzz_seeds(tmp_path_factory):
    """The seed files (tiny models, small indexes, corpora), built once per session."""
    return prepare(tmp_path_factory.mktemp("fuzz"))
