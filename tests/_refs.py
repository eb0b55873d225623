"""Helpers shared by the tests (imported by bare name: pytest.ini puts tests/ on sys.path; never
``tests.x``, since mmsegmentation installs a top-level ``tests`` package)."""
import glob
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_tool(script):
    """A script of tools/analysis/ as a module (they are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(Path(script).stem,
                                                  REPO / 'tools/analysis' / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_dir():
    """Reference outputs of the official code: tests/data/official, or the folder named by
    $MMDEFSCAN_FIXTURES (other seeds / reduced configurations in the same format)."""
    folder = Path(os.environ.get('MMDEFSCAN_FIXTURES') or REPO / 'tests/data/official')
    if not folder.is_dir():
        raise FileNotFoundError(f'official fixtures not found in {folder} (MMDEFSCAN_FIXTURES)')
    return folder


def reference_files(model):
    files = sorted(glob.glob(str(fixture_dir() / f'{model}_*.pt')))
    assert files, f'no {model} reference files in {fixture_dir()}'
    return files


def saved_bytes(run, keep=lambda t: True):
    """(run()'s result, bytes of the distinct storages autograd keeps for its backward, among
    the saved tensors ``keep`` accepts)."""
    storages = {}

    def pack(t):
        if keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(storages.values())


def max_rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max())


def load_ref(path):
    return torch.load(path, weights_only=True)


def run_case(model, ref, name, dtype):
    """Eval outputs, train outputs and input gradient, each after a fresh load_state_dict (the
    fixture README's procedure)."""
    x = ref[f'input_{name}'].to(dtype)
    model.load_state_dict(ref['state_dict'], strict=True)
    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    model.load_state_dict(ref['state_dict'], strict=True)
    model.train()
    x = x.clone().requires_grad_(True)
    out_train = model(x)
    loss = sum((o * w.to(dtype)).sum() for o, w in zip(out_train, ref[f'grad_weights_{name}']))
    grad, = torch.autograd.grad(loss, x)
    return out_eval, out_train, grad
