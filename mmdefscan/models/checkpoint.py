"""Strict, explained loading of backbone weights.

The official repositories print "Failed loading checkpoint" (or log missing keys) and train from
random weights. Here every missing, unexpected or mis-shaped key is an error that names it; the
only tolerated gaps are parts that a classification checkpoint cannot contain (the backbone's
new output norms), and the classification head, which a backbone drops.
"""
import pickle

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


def load_checkpoint_file(filename, map_location='cpu'):
    """Load with torch's safe ``weights_only`` unpickler (local paths, URLs, MMEngine schemes)."""
    try:
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{filename}: holds Python objects that safe loading refuses ({str(err).splitlines()[0]}); '
            'convert it with tools/model_converters/ first') from None


def _short(keys, limit=6):
    keys = sorted(keys)
    more = f' ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def load_backbone_weights(module, filename, prefix=None, head_prefixes=(), optional_prefixes=(),
                          logger='current'):
    """Load ``filename`` into ``module`` strictly.

    Args:
        prefix: keep only keys under this prefix (e.g. ``'backbone.'`` of a detector) and strip it.
        head_prefixes: classification-head keys that a backbone drops.
        optional_prefixes: module keys that may be absent when the checkpoint has none of them at
            all (e.g. ``'outnorm'``: official classification checkpoints have no output norms).
    """
    state = extract_state_dict(load_checkpoint_file(filename), str(filename))
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f'{filename}: no key starts with prefix {prefix!r}')
    dropped = [k for k in state if k.startswith(tuple(head_prefixes))] if head_prefixes else []
    for k in dropped:
        del state[k]

    own = module.state_dict()
    missing = set(own) - set(state)
    absent = {p for p in optional_prefixes if not any(k.startswith(p) for k in state)}
    kept_init = {k for k in missing if k.startswith(tuple(absent))}
    missing -= kept_init
    unexpected = set(state) - set(own)
    mismatched = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
                  for k in set(state) & set(own) if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing: {_short(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected: {_short(unexpected)}')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches: {_short(mismatched)}')
    if problems:
        raise CheckpointError(f'{filename} does not fit {type(module).__name__}: '
                              + '; '.join(problems))
    module.load_state_dict(state, strict=False)
    notes = f', dropped {len(dropped)} head keys' if dropped else ''
    notes += f', kept init for {len(kept_init)} keys ({_short(kept_init, 3)})' if kept_init else ''
    print_log(f'Loaded {len(state)} tensors into {type(module).__name__} from {filename}{notes}',
              logger=logger)
