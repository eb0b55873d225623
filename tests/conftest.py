"""Shared pytest fixtures."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels run in Triton's interpreter on CPU; must be set before Triton is imported
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
