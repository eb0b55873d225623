"""Shared fixtures. Helpers live here (not in an importable ``tests`` package: mmsegmentation
installs a top-level ``tests`` package into site-packages)."""
import glob
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_dir():
    """Reference outputs of the official code: $MMDEFSCAN_FIXTURES, the shared checkout beside the
    repository, or the copy under tests/data/official."""
    for candidate in (os.environ.get('MMDEFSCAN_FIXTURES'), REPO.parent / 'shared/fixtures/official',
                      REPO / 'tests/data/official'):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError('official fixtures not found (set MMDEFSCAN_FIXTURES)')


def reference_files(model):
    files = sorted(glob.glob(str(fixture_dir() / f'{model}_*.pt')))
    assert files, f'no {model} reference files in {fixture_dir()}'
    return files


@pytest.fixture(scope='session')
def fixtures_path():
    return fixture_dir()


def max_rel_err(out, ref):
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.fixture
def rel_err():
    return max_rel_err


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
