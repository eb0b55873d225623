"""Convert official DefMamba / Spatial-Mamba / DAMamba checkpoints into mmdefscan checkpoints.

The official repositories release and write weights in several layouts: training states of their
Swin-style classification scripts (``{'model', 'model_ema', 'optimizer', 'lr_scheduler',
'max_accuracy', 'scaler', 'epoch', 'config', ...}`` with a yacs ``CfgNode`` or argparse
``Namespace`` pickled in), flat state dicts with the classifier head (DAMamba's released
``DAMamba-T.pth``), and mmdet / mmseg checkpoints (``state_dict`` under ``backbone.``). A converter
picks the weights (``state_dict``, ``model``, a flat dict, or the EMA copy with ``ema=True``), keeps
the backbone, drops the head, adds DefMamba's / Spatial-Mamba's output norms at their init values
(LayerNorm weight 1, bias 0: the official downstream code leaves them there too), infers the
variant from the key shapes, builds that backbone and loads the result strictly before anything is
written, so the written file loads through ``init_cfg=dict(type='Pretrained', checkpoint=DST)``
with zero missing and zero unexpected keys. Files that torch's safe ``weights_only`` loading
refuses (pickled Python objects) are read with a restricted unpickler: tensors, containers and
torch's allow-listed types are rebuilt, every other class is replaced by an inert record of its
pickled data (no code from the file runs, nothing is imported), and references to ``os``,
``sys``, ``subprocess``, ``builtins.eval`` and the like are refused outright. What was replaced
and dropped is reported.
"""
import _compat_pickle
import argparse
import math
import os
import os.path as osp
import pickle
import re
import types
from collections import Counter

import torch

from .backbones import DAMamba, DefMamba, SpatialMamba
from .checkpoint import READ_ERRORS, CheckpointError, damaged, fit_state_dict, refuses_objects

# Where the weights may be, in order of preference; the EMA copies only with ``ema=True`` (or when
# a file holds nothing else). 'state_dict_ema' is timm's train.py name.
WEIGHT_KEYS = ('state_dict', 'model', 'module')
EMA_KEYS = ('model_ema', 'state_dict_ema')

# Modules no checkpoint has a reason to reference (code execution, files, processes): a file that
# names them is refused, even though an inert record would not run them.
_REFUSED_MODULES = {'os', 'posix', 'nt', 'sys', 'subprocess', 'shutil', 'socket', 'importlib',
                    'runpy', 'pty', 'ctypes', 'marshal', 'pickle', '_pickle', 'code', 'codeop',
                    'webbrowser', 'signal', 'multiprocessing', 'asyncio', 'threading'}
_REFUSED_BUILTINS = {'eval', 'exec', 'compile', 'open', '__import__', 'getattr', 'setattr',
                     'delattr', 'globals', 'locals', 'vars', 'input', 'breakpoint', 'exit', 'quit'}


# ---------------------------------------------------------------------------------------------
# Safe reading of untrusted checkpoints
# ---------------------------------------------------------------------------------------------

class InertObject(dict):
    """Stand-in for an object of a class that an untrusted checkpoint names.

    It keeps what the pickle stream gave it as plain data (constructor arguments in ``args``,
    ``__setstate__`` state in ``state``, dict items as its own items, list items in ``items``)
    and runs no code of the named class. ``pickled_name`` is the class's ``module.qualname``.
    """
    pickled_name = '?'

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items_ = args, None, []
        return obj

    def __init__(self, *args, **kwargs):  # noqa: D401  (REDUCE calls the class; keep the data)
        super().__init__()

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_.append(item)

    def extend(self, items):
        self.items_.extend(items)

    def __repr__(self):
        return f'<inert {self.pickled_name}>'


def _allowed_globals():
    """Globals that torch's ``weights_only`` unpickler rebuilds (tensors, storages, dtypes,
    OrderedDict, ...) plus the ones added to its allow-list (MMEngine's, see engine.safe_load)."""
    from torch import _weights_only_unpickler as wo
    allowed = dict(wo._get_allowed_globals())
    allowed.update(wo._get_user_allowed_globals())
    return allowed


def _restricted_pickle_module(inert):
    """A ``pickle_module`` for ``torch.load`` whose unpickler only rebuilds allow-listed globals
    and turns every other class into an :class:`InertObject` subclass (counted in ``inert``)."""
    allowed = _allowed_globals()
    classes = {}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            # protocol-2 files of Python 2 name modules the old way (copy_reg, __builtin__)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f'{module}.{name}'
            if full.startswith('numpy.core.'):  # numpy 1 names of numpy 2's numpy._core
                full = 'numpy._core.' + full[len('numpy.core.'):]
            if full in allowed:
                return allowed[full]
            if module.split('.')[0] in _REFUSED_MODULES or (
                    module == 'builtins' and name in _REFUSED_BUILTINS):
                raise pickle.UnpicklingError(
                    f'refusing {full}: a checkpoint has no reason to reference it (the file may '
                    'be malicious)')
            inert[full] += 1
            if full not in classes:
                classes[full] = type(name, (InertObject,), {'pickled_name': full,
                                                            '__module__': __name__})
            return classes[full]

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    return types.SimpleNamespace(__name__='mmdefscan_restricted_pickle',
                                 Unpickler=RestrictedUnpickler, load=load)


def load_untrusted_checkpoint(path):
    """Read a checkpoint of unknown origin without running code from it.

    First with torch's ``weights_only`` unpickler; if that refuses a Python object, with the
    restricted unpickler described in the module docstring. Returns ``(obj, inert)`` where
    ``inert`` counts the references to each class name whose objects became
    :class:`InertObject` records.
    """
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    if osp.getsize(path) == 0:
        raise damaged(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True), Counter()
    except (*READ_ERRORS, KeyError) as err:
        if not refuses_objects(err):
            raise damaged(path, err) from None
        # pickled Python objects: read again with the restricted unpickler
    inert = Counter()
    try:
        # weights_only=False is required by torch for a custom pickle_module; the module given
        # here rebuilds only allow-listed globals (see _restricted_pickle_module)
        obj = torch.load(path, map_location='cpu', weights_only=False,
                         pickle_module=_restricted_pickle_module(inert))
    except pickle.UnpicklingError as err:
        raise CheckpointError(f'{path}: {_first_line(err)}') from None
    except (*READ_ERRORS, TypeError, AttributeError, IndexError) as err:
        raise damaged(path, err) from None
    return obj, inert


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# The three model families: recognising keys and inferring the variant
# ---------------------------------------------------------------------------------------------

def _blocks(shapes, pattern):
    """{stage: set of block indices} for keys matching ``pattern`` (two groups: stage, block)."""
    found = {}
    for key in shapes:
        m = re.match(pattern, key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return found


def _per_stage(shapes, stage_prefix, suffix, fn, what):
    """The value ``fn(shape)`` takes on the keys ``{stage_prefix}{j}.{suffix}`` (any block j);
    the most common one if blocks disagree (the strict load then names the odd keys)."""
    values = Counter(fn(shape) for key, shape in shapes.items()
                     if key.startswith(stage_prefix) and key.endswith('.' + suffix)
                     and re.fullmatch(r'\d+', key[len(stage_prefix):-len(suffix) - 1]))
    if not values:
        raise CheckpointError(f'cannot infer the {what}: no key {stage_prefix}*.{suffix}')
    return values.most_common(1)[0][0]


def _depths(shapes, pattern, family):
    blocks = _blocks(shapes, pattern)
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f'not a {family} backbone: stages {sorted(blocks)} in the keys')
    return [max(blocks[i]) + 1 for i in range(len(blocks))]


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _infer_defmamba(shapes):
    depths = _depths(shapes, r'layers\.(\d+)\.blocks\.(\d+)\.', 'DefMamba')
    dims, ratios, states, ranks, mlps = [], set(), set(), [], set()
    for i in range(len(depths)):
        prefix = f'layers.{i}.blocks.'
        proj = _per_stage(shapes, prefix, 'op.in_proj.weight', tuple, f'width of stage {i}')
        dims.append(proj[1])
        ratios.add(_number(proj[0] / 2 / proj[1]))
        dt = _per_stage(shapes, prefix, 'op.dt_projs_weight', tuple, f'dt rank of stage {i}')
        ranks.append(dt[2])
        xp = _per_stage(shapes, prefix, 'op.x_proj_weight', tuple, f'state size of stage {i}')
        states.add((xp[1] - dt[2]) // 2)
        mlps.add(_number(_per_stage(shapes, prefix, 'mlp.fc1.weight', tuple,
                                    f'MLP width of stage {i}')[0] / proj[1]))
    if len(ratios) > 1 or len(states) > 1 or len(mlps) > 1:
        raise CheckpointError(f'DefMamba keys with per-stage ssm_ratio {ratios}, d_state '
                              f'{states} or mlp_ratio {mlps}: not a DefMamba variant')
    ratio = ratios.pop()
    auto = [math.ceil(d / 16) for d in dims]
    rank = 'auto' if ranks == auto else ranks[0]
    if rank != 'auto' and len(set(ranks)) > 1:
        raise CheckpointError(f'DefMamba keys with dt ranks {ranks}: not a DefMamba variant')
    extra = dict(ssm_d_state=states.pop(), ssm_ratio=ratio, ssm_dt_rank=rank,
                 mlp_ratio=mlps.pop())
    arch = dict(dims=dims, depths=depths)
    defaults = dict(ssm_d_state=16, ssm_ratio=1, ssm_dt_rank='auto', mlp_ratio=4)
    name = _variant_name(DefMamba, arch, extra, defaults)
    return (name or arch), extra


def _infer_spatialmamba(shapes):
    depths = _depths(shapes, r'layers\.(\d+)\.blocks\.(\d+)\.', 'Spatial-Mamba')
    dims, mlps, states = [], set(), set()
    for i in range(len(depths)):
        prefix = f'layers.{i}.blocks.'
        proj = _per_stage(shapes, prefix, 'self_attention.in_proj.weight', tuple,
                          f'width of stage {i}')
        if proj[0] != 4 * proj[1]:
            raise CheckpointError(f'Spatial-Mamba stage {i} has in_proj {proj}: only expand=2 '
                                  '(in_proj (4C, C)) exists')
        dims.append(proj[1])
        states.add(_per_stage(shapes, prefix, 'self_attention.A_logs', tuple,
                              f'state size of stage {i}')[1])
        mlps.add(_number(_per_stage(shapes, prefix, 'mlp.fc1.weight', tuple,
                                    f'MLP width of stage {i}')[0] / proj[1]))
    if len(mlps) > 1 or states != {1}:
        raise CheckpointError(f'Spatial-Mamba keys with mlp_ratio {mlps} and d_state {states}: '
                              'not a Spatial-Mamba variant (d_state 1, one mlp_ratio)')
    extra = dict(mlp_ratio=mlps.pop())
    arch = dict(dims=dims, depths=depths)
    return (_variant_name(SpatialMamba, arch, extra, dict(mlp_ratio=4)) or arch), extra


def _infer_damamba(shapes):
    depths = _depths(shapes, r'stages\.(\d+)\.blocks\.(\d+)\.', 'DAMamba')
    dims, mlps, head_dims, layerscale = [], [], set(), []
    for i in range(len(depths)):
        prefix = f'stages.{i}.blocks.'
        dim = _per_stage(shapes, prefix, 'token_mixer.in_proj.weight', tuple,
                         f'width of stage {i}')[0]
        dims.append(dim)
        groups = _per_stage(shapes, prefix, 'token_mixer.da_scan.offset.weight', tuple,
                            f'groups of stage {i}')[0] // 2
        head_dims.add(dim // max(groups, 1))
        mlps.append(_number(_per_stage(shapes, prefix, 'mlp.fc1.weight', tuple,
                                       f'MLP width of stage {i}')[0] / dim))
        layerscale.append(any(re.fullmatch(rf'{re.escape(prefix)}\d+\.layer_scale_1', k)
                              for k in shapes))
    if len(head_dims) > 1:
        raise CheckpointError(f'DAMamba keys with per-stage head_dim {head_dims}: not a DAMamba '
                              'variant')
    arch = dict(dims=dims, depths=depths, mlp_ratios=mlps, head_dim=head_dims.pop(),
                layerscale=layerscale)
    return (_variant_name(DAMamba, arch, {}, {}) or arch), {}


def _variant_name(cls, arch, extra, defaults):
    """'tiny' / 'small' / 'base' if ``arch`` and ``extra`` are exactly that released variant."""
    if any(extra.get(k) != v for k, v in defaults.items()):
        return None
    settings = __import__(cls.__module__, fromlist=['ARCH_SETTINGS']).ARCH_SETTINGS
    for name, setting in settings.items():
        dims = setting['dims']
        dims = [dims * 2 ** i for i in range(len(setting['depths']))] if isinstance(dims, int) \
            else list(dims)
        if dims != list(arch['dims']) or list(setting['depths']) != list(arch['depths']):
            continue
        if all(list(setting[k]) == list(arch[k]) if isinstance(setting[k], (list, tuple))
               else setting[k] == arch[k] for k in arch if k not in ('dims', 'depths')):
            return name
    return None


class Family:
    """What the converter needs to know about one model family."""

    def __init__(self, name, cls, signature, infer, final_norm, head):
        self.name, self.cls, self.signature, self.infer = name, cls, signature, infer
        self.final_norm = final_norm  # the official classifier's final norm prefix (or None)
        self.head = head  # the official classifier's Linear prefix

    @property
    def head_prefixes(self):
        return self.cls.head_prefixes

    def build(self, arch, extra, out_indices=None):
        kwargs = dict(extra)
        if out_indices is not None:
            kwargs['out_indices'] = out_indices
        return self.cls(arch=arch, drop_path_rate=0.0, **kwargs)


FAMILIES = {
    'defmamba': Family('DefMamba', DefMamba, r'layers\.\d+\.blocks\.\d+\.op\.DS\.', _infer_defmamba,
                       'classifier.norm.', 'classifier.head.'),
    'spatialmamba': Family('Spatial-Mamba', SpatialMamba,
                           r'layers\.\d+\.blocks\.\d+\.self_attention\.state_fusion\.',
                           _infer_spatialmamba, 'norm.', 'head.'),
    'damamba': Family('DAMamba', DAMamba, r'stages\.\d+\.blocks\.\d+\.token_mixer\.da_scan\.',
                      _infer_damamba, None, 'head.fc.'),
}


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

def _describe(value):
    if isinstance(value, InertObject):
        return f'{value.pickled_name}, inert'
    if torch.is_tensor(value):
        return f'tensor {tuple(value.shape)}'
    return type(value).__name__


def select_weights(checkpoint, ema=False):
    """The state dict of a loaded checkpoint: ``(state, where, notes)``.

    ``where`` names the entry used (``'state_dict'``, ``'model'``, ``'model_ema'``, ... or
    ``'(flat)'``). Non-tensor entries inside the chosen dict are dropped with a note.
    """
    notes = []
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'expected a dict, got {_describe(checkpoint)}')
    if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        if ema:
            raise CheckpointError('--ema: this file is a flat state dict without an EMA copy')
        return dict(checkpoint), '(flat)', notes
    candidates = EMA_KEYS if ema else WEIGHT_KEYS
    where = next((k for k in candidates if isinstance(checkpoint.get(k), dict)
                  and any(torch.is_tensor(v) for v in checkpoint[k].values())), None)
    if where is None and not ema:
        where = next((k for k in EMA_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if where is not None:
            notes.append(f'only EMA weights in the file: using {where!r}')
    if where is None:
        keys = sorted(map(str, checkpoint))[:12]
        wanted = ' / '.join(candidates)
        raise CheckpointError(f'no {wanted} weights found (top-level keys: {keys})')
    state = {k: v for k, v in checkpoint[where].items() if torch.is_tensor(v)}
    others = sorted(set(map(str, checkpoint[where])) - set(state))
    if others:
        notes.append(f'dropped {len(others)} non-tensor entries of {where!r}: {others[:6]}')
    if not ema and any(isinstance(checkpoint.get(k), dict) for k in EMA_KEYS if k != where):
        held = ', '.join(k for k in EMA_KEYS if k in checkpoint)
        notes.append(f'the file also holds EMA weights ({held}); --ema converts those')
    rest = [f'{k} ({_describe(v)})' for k, v in checkpoint.items() if k != where]
    if rest:
        notes.append(f'dropped top-level entries: {", ".join(rest)}')
    return state, where, notes


def _strip(state, notes):
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
        notes.append("stripped the DataParallel prefix 'module.'")
    if any(k.startswith('backbone.') for k in state):
        others = Counter(k.split('.')[0] for k in state if not k.startswith('backbone.'))
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        notes.append("kept the 'backbone.' keys" + (
            f' (dropped {sum(others.values())} keys of {", ".join(sorted(others))})'
            if others else ''))
    return state


def convert_state_dict(state, family, arch=None, classifier=False, num_classes=None, notes=None):
    """Convert an official state dict of ``family`` ('defmamba', 'spatialmamba', 'damamba').

    Args:
        state: the weights (classification model, backbone, or detector/segmentor with
            ``backbone.`` keys).
        arch: 'tiny' | 'small' | 'base' to require that variant; None infers it from the keys
            (any width / depth configuration of the family is accepted).
        classifier: write an mmpretrain ``ImageClassifier`` state (``backbone.*`` and
            ``head.fc.*``, the layout of ``configs/imagenet/``) instead of a backbone: the
            official final norm becomes the backbone's last output norm, the official Linear head
            ``head.fc``. Needs a classification checkpoint with its head.
        notes: a list the report lines are appended to.

    Returns:
        ``(out_state, arch, model)``: the converted state, the resolved architecture (name or
        dict) and the backbone it was verified on (strict load, zero missing / unexpected).
    """
    fam = FAMILIES[family]
    notes = [] if notes is None else notes
    state = _strip(dict(state), notes)
    if not any(re.match(fam.signature, k) for k in state):
        raise CheckpointError(f'not a {fam.name} checkpoint: no key matches {fam.signature!r} '
                              f'(first keys: {sorted(state)[:4]})')
    head = {k: v for k, v in state.items() if k.startswith(fam.head_prefixes)}
    state = {k: v for k, v in state.items() if k not in head}
    inferred, extra = fam.infer({k: tuple(v.shape) for k, v in state.items()})
    if arch is None:
        arch = inferred
        notes.append(f'architecture: {fam.name} {_arch_repr(arch)}'
                     + (f' {extra}' if isinstance(arch, dict) else '')
                     + ' (inferred from the key shapes)')
    else:
        extra = {}
        notes.append(f"architecture: {fam.name} arch='{arch}' (--arch)")
    settings = __import__(fam.cls.__module__, fromlist=['ARCH_SETTINGS']).ARCH_SETTINGS
    last = len(arch['depths'] if isinstance(arch, dict) else settings[arch]['depths']) - 1
    out = dict(state)
    if classifier:
        if not head:
            raise CheckpointError(f'--classifier needs the classification head ({fam.head}*), '
                                  'which this checkpoint does not have')
        model = fam.build(arch, extra, out_indices=(last,))
        if fam.final_norm:  # official final LN -> the backbone's output norm of the last stage
            norm = {k: v for k, v in head.items() if k.startswith(fam.final_norm)}
            if not norm:
                raise CheckpointError(f'--classifier: the final norm {fam.final_norm}* is missing')
            out.update({f'outnorm{last}.' + k[len(fam.final_norm):]: v for k, v in norm.items()})
            notes.append(f'official final norm {fam.final_norm}* -> backbone.outnorm{last}.*')
    else:
        model = fam.build(arch, extra)
        if head:
            notes.append(f'dropped {len(head)} classification-head keys '
                         f'({", ".join(sorted(head)[:4])})')
    own = model.state_dict()
    # output norms of stages the source has none for (official classification checkpoints have
    # none at all; an mmpretrain classifier has only the last one)
    added = sorted(k for k in own if k.startswith('outnorm')
                   and not any(key.startswith(k.split('.')[0] + '.') for key in out))
    for k in added:
        out[k] = torch.ones_like(own[k]) if k.endswith('.weight') else torch.zeros_like(own[k])
    if added:
        notes.append(f'added {len(added)} output-norm keys at their init values (LayerNorm '
                     f'weight 1, bias 0): {", ".join(added)} (the source has none; the official '
                     'downstream code leaves them at this init too)')
    out, _ = fit_state_dict(model, out, f'the converted {fam.name} weights')
    model.load_state_dict(out, strict=True)
    notes.append(f'verified: {type(model).__name__}({_arch_repr(arch)}) loads all {len(out)} '
                 'tensors strictly (0 missing, 0 unexpected, 0 shape mismatches)')
    if classifier:
        weight = head.get(fam.head + 'weight')
        bias = head.get(fam.head + 'bias')
        if weight is None or bias is None or weight.dim() != 2 \
                or weight.shape[1] != model.dims[last]:
            raise CheckpointError(f'classifier head {fam.head}weight/bias does not fit a '
                                  f'{model.dims[last]}-channel last stage')
        if num_classes is not None and weight.shape[0] != num_classes:
            raise CheckpointError(f'the head has {weight.shape[0]} classes, not {num_classes}')
        out = {f'backbone.{k}': v for k, v in out.items()}
        out.update({'head.fc.weight': weight, 'head.fc.bias': bias})
        notes.append(f'official head {fam.head}* -> head.fc.* ({weight.shape[0]} classes)')
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    return out, arch, model


def _arch_repr(arch):
    return f"arch='{arch}'" if isinstance(arch, str) else f'arch={arch}'


def convert_checkpoint(src, dst, family, arch=None, ema=False, classifier=False, log=print):
    """Read ``src`` (safely), convert it (:func:`convert_state_dict`) and write ``dst``.

    The written file is ``{'state_dict': ..., 'meta': {...}}`` of tensors and plain values only,
    so torch's ``weights_only`` loading (and MMEngine's ``CheckpointLoader``) reads it.
    """
    checkpoint, inert = load_untrusted_checkpoint(src)
    notes = []
    if inert:
        notes.append('torch weights_only loading refused pickled Python objects; read with the '
                     f'restricted unpickler, which made the objects of {len(inert)} foreign '
                     f'class(es) inert (no code ran): {", ".join(sorted(inert))}')
    state, where, more = select_weights(checkpoint, ema=ema)
    notes.append(f"weights: {where!r} ({len(state)} tensors)")
    notes += more
    out, arch, _ = convert_state_dict(state, family, arch=arch, classifier=classifier,
                                      notes=notes)
    meta = dict(converted_from=osp.basename(str(src)), model=FAMILIES[family].name,
                arch=arch if isinstance(arch, str) else {k: list(v) if isinstance(v, (list, tuple))
                                                         else v for k, v in arch.items()},
                weights=where, layout='mmpretrain ImageClassifier' if classifier else 'backbone',
                converter='mmdefscan.models.converters')
    dst = str(dst)
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    tmp = dst + '.tmp'
    torch.save({'state_dict': out, 'meta': meta}, tmp)
    torch.load(tmp, map_location='cpu', weights_only=True, mmap=True)  # safe loading reads it
    os.replace(tmp, dst)
    for line in notes:
        log(line)
    size = sum(v.numel() * v.element_size() for v in out.values()) / 2 ** 20
    log(f'wrote {dst} ({len(out)} tensors, {size:.1f} MiB)')
    return out, notes


def main(family, argv=None):
    """Command line of ``tools/model_converters/<family>2mmdefscan.py``."""
    fam = FAMILIES[family]
    parser = argparse.ArgumentParser(
        description=f'Convert an official {fam.name} checkpoint (ImageNet classification, or '
                    'a Mask R-CNN / UperNet checkpoint) into an mmdefscan backbone checkpoint '
                    "for init_cfg=dict(type='Pretrained', checkpoint=DST).")
    parser.add_argument('src', help='official checkpoint')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--arch', choices=['tiny', 'small', 'base'],
                        help='require this variant (default: inferred from the key shapes)')
    parser.add_argument('--ema', action='store_true',
                        help="convert the EMA weights ('model_ema' / 'state_dict_ema')")
    parser.add_argument('--classifier', action='store_true',
                        help='write an mmpretrain ImageClassifier checkpoint (backbone.* + '
                             'head.fc.*) for configs/imagenet/ instead of a backbone')
    args = parser.parse_args(argv)
    from ..engine.cli import before_the_run, run_cli

    def convert():  # everything here reads and checks the source: its errors are one line
        with before_the_run():
            return convert_checkpoint(args.src, args.dst, family, arch=args.arch, ema=args.ema,
                                      classifier=args.classifier)
    return run_cli(convert)
