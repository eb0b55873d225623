"""Shared pytest fixtures."""
import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels run in Triton's interpreter on CPU; must be set before Triton is imported
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """The embedded synthetic shapes dataset, written once per session (train/test tools, TTA)."""
    from mmdefscan.datasets.synthetic import generate
    return generate(str(tmp_path_factory.mktemp('synthetic')))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _default_scope():
    """Every test leaves MMEngine's default scope as it found it: tests that build mmdet / mmseg /
    mmpretrain configs switch it, and a bare type name built by a later test would then be looked
    up in their registries. (A module fixture's scope holds for its module's tests.) The same
    restore as MMEngine's ``DefaultScope.overwrite_default_scope``, which needs a scope name."""
    from mmengine.registry import DefaultScope
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = saved
