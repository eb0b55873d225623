"""Count the batch shapes a config's training data produce: how much of a schedule the backbone's
CUDA graphs (``cuda_graph=N``, one graph per input shape) would replay.

    python tools/analysis/batch_shapes.py CONFIG [--batches 2000] [--workers N]
                                          [--cfg-options k=v ...]

Runs what the model would see, without the model: the training data loader (the config's
pipeline, sampler and batch sampler, e.g. mmdet's aspect-ratio grouping) and the model's data
preprocessor (padding to the batch's largest image and the size divisor, batch augments).
Prints each input shape with its number of batches, share and cumulative share, then, for a few
N, the share of these batches that would replay from graphs: with the cache's rule (the first N
distinct shapes that come are captured, as ``mmdefscan/models/cuda_graph.py`` does) and at
best (the N most frequent shapes).
"""
import argparse
import collections
import itertools

from mmengine.config import DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmdefscan  # noqa: F401  (registers the backbones, safe checkpoint loading)
from mmdefscan.engine import UserError, before_the_run, check_data_paths, load_config, run_cli
from mmdefscan.registry import MODELS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--batches', type=int, default=2000,
                        help='batches to draw (at most one epoch of a finite loader)')
    parser.add_argument('--workers', type=int, help="the loader's workers (default: the config's)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def batch_shapes(cfg, batches, workers=None):
    """The input shapes of the first ``batches`` training batches, in the order they come."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    loader_cfg = cfg.train_dataloader.copy()
    if workers is not None:
        loader_cfg.update(num_workers=workers, persistent_workers=workers > 0)
    seed = (cfg.get('randomness') or {}).get('seed', 0)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    preprocessor = MODELS.build(cfg.model.data_preprocessor) if cfg.model.get(
        'data_preprocessor') else None
    shapes = []
    for data in itertools.islice(loader, batches):
        inputs = preprocessor(data, True)['inputs'] if preprocessor else data['inputs']
        shapes.append(tuple(inputs.shape))
    return shapes


def replayed_share(shapes, n):
    """The share of ``shapes`` whose graph exists when the first ``n`` distinct shapes to come are
    captured (a captured shape replays from its first batch on)."""
    captured = list(dict.fromkeys(shapes))[:n]
    return sum(shape in captured for shape in shapes) / len(shapes)


def best_share(shapes, n):
    """The share of ``shapes`` covered by the ``n`` most frequent ones."""
    return sum(count for _, count in collections.Counter(shapes).most_common(n)) / len(shapes)


def main():
    args = parse_args()
    with before_the_run():
        cfg = load_config(args.config, args.cfg_options)
        check_data_paths(cfg, splits=('train_dataloader', ))
    shapes = batch_shapes(cfg, args.batches, args.workers)
    if not shapes:
        raise UserError(ValueError(f'{args.config}: the training data loader gave no batch'))
    counts = collections.Counter(shapes).most_common()
    print(f'\n{len(shapes)} training batches, {len(counts)} input shapes\n')
    print('| shape | batches | share | cumulative |')
    print('|---|---|---|---|')
    total = 0
    for shape, count in counts:
        total += count
        print(f'| {"x".join(map(str, shape))} | {count} | {count / len(shapes):.1%} | '
              f'{total / len(shapes):.1%} |')
    print('\n| cuda_graph=N | replayed, first N shapes to come | replayed, N most frequent |')
    print('|---|---|---|')
    for n in (1, 2, 4, 8, 16, 32):
        print(f'| {n} | {replayed_share(shapes, n):.1%} | {best_share(shapes, n):.1%} |')
        if n >= len(counts):
            break


if __name__ == '__main__':
    run_cli(main)
