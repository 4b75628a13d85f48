"""Fixtures shared by the unit tests."""
import pytest
from tiny import make_tiny_pipeline


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A pipeline checkpoint folder (tokenizer/ + transformer/) of random-initialised ci models, one per test module."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))
