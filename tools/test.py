"""Test a checkpoint with an mm config; ``--tta`` runs the config's multi-scale + flip TTA.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR] [--out FILE]
                                           [--show-dir DIR] [--cfg-options k=v ...]
                                           [--launcher none|pytorch|slurm]
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdefscan  # noqa: F401  (registers backbones, TTA models, safe checkpoint loading)
from mmdefscan.engine import (before_the_run, check_checkpoint, check_data_paths, enable_outputs,
                              enable_tta, load_config, run_cli)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='detection: dump predictions to this .pkl; '
                                      'segmentation: directory for the predicted maps')
    parser.add_argument('--show-dir', help='save painted predictions into this directory')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    with before_the_run():
        cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
        cfg.load_from = args.checkpoint
        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
        scope = cfg.get('default_scope', 'mmdet')
        enable_outputs(cfg, scope, show_dir=args.show_dir, out=args.out)
        if args.tta:
            enable_tta(cfg)
        check_data_paths(cfg, splits=('test_dataloader',))
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
        check_checkpoint(runner.model, args.checkpoint, 'test')
    runner.test()  # what testing raises keeps its traceback

if __name__ == '__main__':
    run_cli(main)
