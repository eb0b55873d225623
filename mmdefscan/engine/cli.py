"""What the tools share: config loading, early checks, one-line errors for what is wrong before
the run starts."""
import contextlib
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, ConfigDict

from ..models.checkpoint import CheckpointError

# Exceptions that, raised while a tool reads its arguments, config, data paths and checkpoints
# and builds its model (:func:`before_the_run`), mean that one of those is wrong.
USER_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError, NotADirectoryError,
               RuntimeError, AssertionError, SyntaxError, ImportError)


class UserError(Exception):
    """What is wrong before the run starts (``cause``); :func:`run_cli` prints it as one line."""

    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


@contextlib.contextmanager
def before_the_run():
    """Around a tool's checks and builds: an error of ``USER_ERRORS`` raised inside becomes a
    :class:`UserError`. What the run itself raises (training, testing, counting) keeps its
    type and traceback, as in mmdet's and mmseg's tools."""
    try:
        yield
    except USER_ERRORS as err:
        raise UserError(err) from err


def load_config(path, cfg_options=None, launcher='none', work_dir=None):
    """Config.fromfile + --cfg-options + work_dir, CPU-friendly distributed settings."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        _setup_cpu_distributed(cfg, launcher)
    return cfg


def _setup_cpu_distributed(cfg, launcher):
    """NCCL needs GPUs: gloo, and DDP without device ids, on CPU-only machines.

    MMEngine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` even for gloo, which a CPU
    build of torch cannot do; the process group is therefore created here (torchrun's env://),
    and the Runner finds it initialised.
    """
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper.update(device_ids=None, broadcast_buffers=False)
    cfg.model_wrapper_cfg = wrapper
    if launcher == 'pytorch' and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='gloo')


def _datasets(cfg):
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split)
        if loader:
            stack = [(split + '.dataset', loader.get('dataset', {}))]
            while stack:  # wrappers (RepeatDataset, ConcatDataset, ...) nest datasets
                where, ds = stack.pop()
                if 'dataset' in ds:
                    stack.append((where + '.dataset', ds['dataset']))
                for i, inner in enumerate(ds.get('datasets', []) or []):
                    stack.append((f'{where}.datasets[{i}]', inner))
                yield where, ds


def check_data_paths(cfg, splits=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """Fail early, naming the config key, when a dataset root, annotation file or folder, or an
    evaluator's annotation file is missing (otherwise the error surfaces deep inside a
    dataloader worker, or once the run has started)."""
    for where, ds in _datasets(cfg):
        if not where.startswith(splits):
            continue
        root = ds.get('data_root') or ''
        paths = [('data_root', root)] if root else []
        if ds.get('ann_file'):
            paths.append(('ann_file', osp.join(root, ds['ann_file'])))
        prefix = ds.get('data_prefix') or {}
        if isinstance(prefix, str):  # mmpretrain's folder datasets take one prefix
            prefix = {None: prefix}
        for key, sub in prefix.items():
            if sub:
                name = 'data_prefix' if key is None else f'data_prefix.{key}'
                paths.append((name, osp.join(root, sub)))
        for key, path in paths:
            if not osp.exists(path):
                raise FileNotFoundError(f'{where}.{key}: {path} does not exist')
    for split in splits:  # the evaluators' annotation files (COCO's), read when they are built
        evaluator = split.replace('_dataloader', '_evaluator')
        if split == 'train_dataloader' or not cfg.get(split) or not cfg.get(evaluator):
            continue
        many = isinstance(cfg[evaluator], (list, tuple))
        for i, metric in enumerate(cfg[evaluator] if many else [cfg[evaluator]]):
            path = metric.get('ann_file') if isinstance(metric, dict) else None
            if path and '://' not in path and not osp.exists(path):
                where = f'{evaluator}[{i}]' if many else evaluator
                raise FileNotFoundError(f'{where}.ann_file: {path} does not exist')


def enable_tta(cfg):
    """--tta: the config's tta_pipeline feeds tta_model wrapped around the model."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise KeyError('--tta needs tta_model and tta_pipeline in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if 'tta_test_cfg' in cfg:  # e.g. whole-image views while single-scale testing slides
        cfg.model.test_cfg = cfg.tta_test_cfg
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def enable_outputs(cfg, scope, show_dir=None, out=None):
    """--show-dir / --out of tools/test.py, for mmdet and mmseg configs."""
    if show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise KeyError('--show-dir needs default_hooks.visualization in the config')
        hook['draw'] = True
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = show_dir
        else:
            hook['test_out_dir'] = os.path.abspath(show_dir)
    if out:
        if scope == 'mmseg':
            cfg.test_evaluator['output_dir'] = out
            cfg.test_evaluator['keep_results'] = True
        else:
            dump = ConfigDict(type='DumpDetResults' if scope == 'mmdet' else 'DumpResults',
                              out_file_path=out)
            evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
                else [cfg.test_evaluator]
            cfg.test_evaluator = evaluators + [dump]


def leave_process_group():
    """Destroy torch.distributed's process group, if one is up, before the process exits: a rank
    that exits with the group's threads still running can abort at exit ("terminate called
    without an active exception", seen once in the two-process test)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# PyTorch's default allocator cuts a new block out of fixed segments; with the CUDA graphs'
# private pool that leaves 1-2 GiB of the pool unused in the classifiers' training (compare
# train_peak_GiB of ``tools/analysis/benchmark.py --backbone-graphs`` with and without
# ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False``). Growable segments take it back, and
# shrink the eager cache too.
ALLOCATOR_DEFAULT = 'expandable_segments:True'


def prefer_expandable_segments():
    """Let PyTorch's CUDA allocator grow its segments (``PYTORCH_CUDA_ALLOC_CONF``), unless the
    user configured the allocator or CUDA is already initialised (the setting is read once, at
    CUDA's first use). The active setting, or None if this call could not apply it."""
    if torch.cuda.is_initialized() and 'PYTORCH_CUDA_ALLOC_CONF' not in os.environ:
        return None
    return os.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', ALLOCATOR_DEFAULT)


def run_cli(main):
    """Run ``main()``. A :class:`UserError` (see :func:`before_the_run`) or a
    :class:`~mmdefscan.models.checkpoint.CheckpointError` (a checkpoint file that is damaged or
    does not fit, wherever it is read) becomes one line on stderr and exit status 1; any other
    exception propagates with its traceback. After a normal return the process group
    (distributed launch) is destroyed. CUDA's allocator grows its segments unless the user set
    ``PYTORCH_CUDA_ALLOC_CONF`` (:func:`prefer_expandable_segments`).

    Set MMDEFSCAN_DEBUG=1 for the traceback of the one-line errors too.
    """
    prefer_expandable_segments()
    if os.environ.get('MMDEFSCAN_DEBUG'):
        result = main()
        leave_process_group()
        return result
    try:
        result = main()
    except (UserError, CheckpointError) as wrapped:
        err = wrapped.cause if isinstance(wrapped, UserError) else wrapped
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        message = ' '.join(message.split())
        print(f'error: {type(err).__name__}: {message} (MMDEFSCAN_DEBUG=1 for the traceback)',
              file=sys.stderr)
        sys.exit(1)
    leave_process_group()
    return result
