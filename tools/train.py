"""Train a detector, segmentor or classifier from an mm config (mmdet / mmseg / mmpretrain scope).

    python tools/train.py CONFIG [--work-dir DIR] [--amp | --no-amp] [--resume [auto|PATH]]
                                 [--auto-scale-lr] [--cfg-options k=v ...]
                                 [--launcher none|pytorch|slurm]
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdefscan  # noqa: F401  (registers backbones, TTA models, safe checkpoint loading)
from mmdefscan.engine import (before_the_run, check_data_paths, check_run_checkpoints,
                              load_config, run_cli)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    amp = parser.add_mutually_exclusive_group()
    amp.add_argument('--amp', action='store_true', help='automatic mixed precision')
    amp.add_argument('--no-amp', action='store_true',
                     help='full precision for a config that sets AmpOptimWrapper (CPU training)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real batch size (config auto_scale_lr)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from PATH, or from the latest checkpoint in work_dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=[a,b] for lists)')
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
        if args.amp:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        elif args.no_amp and cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'OptimWrapper'
            for key in ('loss_scale', 'dtype', 'use_fsdp'):  # AmpOptimWrapper's own arguments
                cfg.optim_wrapper.pop(key, None)
        if args.auto_scale_lr:
            if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
                raise KeyError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
            cfg.auto_scale_lr.enable = True
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, None
        elif args.resume is not None:
            cfg.resume, cfg.load_from = True, args.resume
        check_data_paths(cfg)
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
        check_run_checkpoints(cfg, runner)
    runner.train()  # what training raises keeps its traceback
    rank, world = runner.rank, runner.world_size
    print(f'rank {rank}/{world}: finished training at iteration {runner.iter}', flush=True)

if __name__ == '__main__':
    run_cli(main)
