"""Shared fixtures of optjit's Python tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Each test may set torch's default dtype (scalar state follows it); put it back."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
