"""Fixtures of the compression tests: a tiny decoder tokenizer (the models are in `_tiny`)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # _finetune_data
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _tiny

from _tiny import tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()
