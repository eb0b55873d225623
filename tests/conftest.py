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


@pytest.fixture(autouse=True)
def _default_scope():
    """Every test starts in the mmdefscan scope and leaves none behind: tests that build mmdet /
    mmseg / mmpretrain configs switch it, and a bare type name built afterwards would then be
    looked up in their registries."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdefscan'):
        yield
