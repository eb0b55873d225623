"""Before a tool runs: the checkpoints its run will load are readable and fit the config's model.

MMEngine's Runner loads a test checkpoint, ``load_from`` and ``--resume`` non-strictly: a
checkpoint of another model only adds ``size mismatch`` / ``missing keys`` lines to the log, and
the run goes on with random weights where they did not fit. :func:`check_run_checkpoints` reads
each such file once before the run (with the same unwrapping and ``module.`` stripping as
MMEngine) and raises :class:`~mmdefscan.models.checkpoint.CheckpointError` with the count and the
first keys of each misfit. As permissive as mmdet where mmdet is:

* the backbone is strict everywhere: every key present, none extra, every shape equal;
* a test checkpoint and a resumed state must also hold every other weight of the model, at its
  shape; keys the model does not have outside the backbone (an auxiliary head the test config
  drops, ...) are ignored, as MMEngine does;
* ``load_from`` starts a training: outside the backbone, missing or re-shaped weights stay at
  their init (e.g. a COCO detector fine-tuned with another number of classes);
* optimizer and scheduler states are optional; resuming needs the training progress
  (``meta`` with ``epoch`` and ``iter``, which MMEngine reads).
"""
import os.path as osp
import re

from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import find_latest_checkpoint

from ..models.checkpoint import (CheckpointError, compare_keys, describe_misfit,
                                 load_checkpoint_file)

BACKBONE = 'backbone.'


def _unwrap(model):
    """The module MMEngine loads a checkpoint into (DDP wrappers and TTA models unwrapped)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _weights(checkpoint, filename):
    """MMEngine's choice: ``state_dict`` if present, else the checkpoint itself; keys without
    a leading ``module.``."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(
            hasattr(v, 'shape') for v in state.values()):
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else []
        raise CheckpointError(f'{filename}: no weights MMEngine can load (a state dict, or one '
                              f"under 'state_dict'; top-level keys: {keys})")
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def check_checkpoint(model, filename, purpose):
    """Raise :class:`CheckpointError` unless ``filename`` is readable and fits ``model`` for
    ``purpose``: ``'test'``, ``'load_from'`` or ``'resume'`` (see the module docstring)."""
    checkpoint = load_checkpoint_file(filename)
    if purpose == 'resume':
        meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
        if not isinstance(meta, dict) or not {'epoch', 'iter'} <= set(meta):
            raise CheckpointError(f'{filename}: not a training state to resume (no meta epoch / '
                                  'iter); to start from its weights, give it as load_from')
    model = _unwrap(model)
    missing, unexpected, mismatched = compare_keys(model.state_dict(),
                                                   _weights(checkpoint, filename))
    unexpected = {k for k in unexpected if k.startswith(BACKBONE)}
    if purpose == 'load_from':
        missing = {k for k in missing if k.startswith(BACKBONE)}
        mismatched = {k: v for k, v in mismatched.items() if k.startswith(BACKBONE)}
    problems = describe_misfit(missing, unexpected, mismatched)
    if problems:
        what = 'test checkpoint' if purpose == 'test' else purpose
        raise CheckpointError(f"{what} {filename} does not fit the config's "
                              f'{type(model).__name__}: {problems}')


def check_pretrained_paths(model):
    """Every local ``init_cfg`` checkpoint (``type='Pretrained'``) of the model's modules exists:
    training loads them at its start."""
    for name, module in _unwrap(model).named_modules():
        init = getattr(module, 'init_cfg', None)
        for cfg in init if isinstance(init, list) else [init]:
            path = cfg.get('checkpoint') if isinstance(cfg, dict) and cfg.get(
                'type') == 'Pretrained' else None
            if isinstance(path, str) and '://' not in path and not osp.isfile(path):
                raise FileNotFoundError(f'{name or "model"}.init_cfg: checkpoint {path} does '
                                        'not exist')


def check_run_checkpoints(cfg, runner):
    """Before training: the ``init_cfg`` checkpoints exist (:func:`check_pretrained_paths`), and
    the checkpoint the Runner will load (``cfg.resume`` / ``cfg.load_from``, or the latest one
    of the work dir for ``resume=True`` without a path) is checked as :func:`check_checkpoint`
    does. (The test tool checks its checkpoint with ``'test'``.)"""
    check_pretrained_paths(runner.model)
    resume, load_from = cfg.get('resume', False), cfg.get('load_from')
    if resume and load_from is None:
        latest = find_latest_checkpoint(runner.work_dir)
        if latest is not None:
            check_checkpoint(runner.model, latest, 'resume')
    elif load_from is not None:
        check_checkpoint(runner.model, load_from, 'resume' if resume else 'load_from')
