import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread (tests/conftest.py's `one_thread`) for every test here."""
    yield
