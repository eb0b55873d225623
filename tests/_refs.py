"""Helpers shared by the tests (imported by bare name: pytest.ini puts tests/ on sys.path; never
``tests.x``, since mmsegmentation installs a top-level ``tests`` package)."""
import glob
import os
from pathlib import Path

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


def max_rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max())
