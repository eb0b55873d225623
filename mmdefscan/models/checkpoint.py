"""Strict, explained loading of backbone weights.

The official repositories print "Failed loading checkpoint" (or log missing keys) and train from
random weights. Here every missing, unexpected or mis-shaped key is an error that names it; the
only tolerated gaps are parts that a classification checkpoint cannot contain (the backbone's
new output norms), output norms of stages a backbone does not output, and the classification
head, which a backbone drops. Official checkpoints in other layouts (training states with pickled
objects, EMA weights, detector prefixes) are converted by :mod:`mmdefscan.models.converters`.
"""
import os.path as osp
import pickle
import zipfile

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

# Where the official trainers and MMEngine keep the weights, in order of preference.
STATE_DICT_KEYS = ('state_dict', 'model', 'model_ema', 'module')


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model; the message names the offending keys."""


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(checkpoint, source='checkpoint'):
    """The weights of a checkpoint: a flat state dict, or the first of ``STATE_DICT_KEYS``."""
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    if isinstance(checkpoint, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(checkpoint.get(key)):
                return dict(checkpoint[key])
        raise CheckpointError(f'{source}: no state dict found (top-level keys: '
                              f'{sorted(map(str, checkpoint))[:10]})')
    raise CheckpointError(f'{source}: expected a dict of tensors, got {type(checkpoint).__name__}')


def refuses_objects(err):
    """Whether torch's ``weights_only`` unpickler stopped at a pickled Python object (a class or
    function it does not allow), not at bytes it cannot read."""
    return isinstance(err, pickle.UnpicklingError) and 'global' in str(err).lower()


def damaged(filename, err=None):
    """The :class:`CheckpointError` of a file torch cannot read; ``err`` is torch's error (None:
    an empty file). torch's advice to retry with ``weights_only=False`` is left out: that does
    not mend a damaged file."""
    if err is None:
        reason = 'the file is empty'
    else:
        text = str(err).split('WeightsUnpickler error:', 1)[-1]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__
    return CheckpointError(f'{filename}: not a readable checkpoint (truncated or corrupt file?): '
                           f'{reason}')


# What torch.load raises on a file of the wrong or damaged bytes.
READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile)


def load_checkpoint_file(filename, map_location='cpu'):
    """Load with torch's safe ``weights_only`` unpickler (local paths, URLs, MMEngine schemes).

    A file that is not a readable checkpoint (empty, truncated download, wrong file) is a
    :class:`CheckpointError` that says so; a missing file stays ``FileNotFoundError``.
    """
    filename = str(filename)  # a path object too
    local = osp.isfile(filename)
    if local and osp.getsize(filename) == 0:
        raise damaged(filename)
    try:
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    except READ_ERRORS + ((KeyError, ) if local else ()) as err:
        if refuses_objects(err):
            raise CheckpointError(
                f'{filename}: holds Python objects that safe loading refuses '
                f'({str(err).splitlines()[0]}); convert it with tools/model_converters/ first'
            ) from None
        raise damaged(filename, err) from None


def _short(keys, limit=6):
    keys = sorted(keys)
    more = f' ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def compare_keys(own, state):
    """``state`` against a module's state dict ``own``: the missing and unexpected keys (sets)
    and the mis-shaped ones (``{key: (shape in state, shape in own)}``)."""
    mismatched = {k: (tuple(state[k].shape), tuple(own[k].shape))
                  for k in set(state) & set(own) if state[k].shape != own[k].shape}
    return set(own) - set(state), set(state) - set(own), mismatched


def describe_misfit(missing, unexpected, mismatched):
    """One line with the count and the first few keys of each kind ('' when all fit)."""
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing: {_short(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected: {_short(unexpected)}')
    if mismatched:
        shapes = [f'{k} {a} vs {b}' for k, (a, b) in mismatched.items()]
        problems.append(f'{len(mismatched)} shape mismatches: {_short(shapes)}')
    return '; '.join(problems)


def fit_state_dict(module, state, source='checkpoint', head_prefixes=(), optional_prefixes=()):
    """Check that ``state`` fits ``module`` key for key and shape for shape.

    Returns the state to load (head keys dropped, see below) and a list of notes; raises
    :class:`CheckpointError` naming every missing, unexpected or mis-shaped key.

    Args:
        head_prefixes: classification-head keys that a backbone drops.
        optional_prefixes: modules a checkpoint may lack or have in excess (``'outnorm'``): a
            module of which the checkpoint has no key at all keeps its init (official
            classification checkpoints have no output norms, an mmpretrain classifier only the
            last one); keys of such modules the backbone does not build (stages not in
            ``out_indices``) are dropped. A module with only some of its keys is an error.
    """
    state = dict(state)
    dropped = [k for k in state if k.startswith(tuple(head_prefixes))] if head_prefixes else []
    for k in dropped:
        del state[k]
    own = module.state_dict()
    missing = set(own) - set(state)
    present = {k.rsplit('.', 1)[0] for k in state}
    kept_init = {k for k in missing if optional_prefixes and k.startswith(tuple(optional_prefixes))
                 and k.rsplit('.', 1)[0] not in present}
    missing -= kept_init
    unused = {k for k in set(state) - set(own) if optional_prefixes
              and k.startswith(tuple(optional_prefixes))}
    for k in unused:
        del state[k]
    _, unexpected, mismatched = compare_keys(own, state)
    problems = describe_misfit(missing, unexpected, mismatched)
    if problems:
        raise CheckpointError(f'{source} does not fit {type(module).__name__}: {problems}')
    notes = [f'dropped {len(dropped)} head keys'] if dropped else []
    if kept_init:
        notes.append(f'kept init for {len(kept_init)} keys ({_short(kept_init, 3)})')
    if unused:
        notes.append(f'ignored {len(unused)} keys of parts it does not build ({_short(unused, 3)})')
    return state, notes


def load_backbone_weights(module, filename, prefix=None, head_prefixes=(), optional_prefixes=(),
                          logger='current'):
    """Load ``filename`` into ``module`` strictly (see :func:`fit_state_dict`).

    Args:
        prefix: keep only keys under this prefix (e.g. ``'backbone.'`` of a detector) and strip it.
        head_prefixes, optional_prefixes: see :func:`fit_state_dict`.
    """
    state = extract_state_dict(load_checkpoint_file(filename), str(filename))
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f'{filename}: no key starts with prefix {prefix!r}')
    state, notes = fit_state_dict(module, state, filename, head_prefixes, optional_prefixes)
    module.load_state_dict(state, strict=False)
    notes = ''.join(f', {n}' for n in notes)
    print_log(f'Loaded {len(state)} tensors into {type(module).__name__} from {filename}{notes}',
              logger=logger)
