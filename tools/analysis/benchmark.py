"""Throughput and memory of backbones (and of full Mask R-CNN / UperNet iterations), one process.

    python tools/analysis/benchmark.py [--models DefMamba-T DefMamba-S Swin-T ...]
        [--batch 128] [--train-batch 64] [--dtypes fp32 bf16] [--iters 10] [--warmup 3]
        [--compile] [--cuda-graphs] [--backbone-graphs] [--detector CONFIG ...]
        [--segmentor CONFIG ...] [--det-shapes HxW ...] [--paired] [--ab NAME=VALUE ...]
        [--json out.json]

Classification shape (224x224): backbone + global pool + linear head (1000 classes).
Inference img/s (no grad), training img/s (forward + backward + AdamW step), peak memory of the
training step: the model's own (weights, optimizer state, CUDA-graph pool and what the step
allocates), not the input batch nor anything an earlier model left (``left_over_GiB``). fp32 runs
with TF32 on (CUDA); bf16 under autocast. CUDA timings use events; the median of ``--iters`` runs
after ``--warmup``. ``--compile`` runs every model through
``torch.compile`` (warm-up includes the compilation); ``--cuda-graphs`` captures every model's
inference step and whole training step (forward, backward, AdamW) in a CUDA graph and times its
replays, which takes the host's launch work out of the classification rows (eager training on
a fast GPU is host-bound, docs/cuda_graph.md). ``--backbone-graphs`` builds our backbones
with ``cuda_graph=True``, what a user can switch on: only their training forward + backward
replay from graphs, the rest of the step stays eager, and the peers stay eager; our models
and our ``--detector`` / ``--segmentor`` configs then run twice, eagerly and with the graphs
(rows ``+bbgraphs``; the downstream configs taking turns with the other configs).
``--ab NAME=VALUE ...`` (alias ``--ab-env``) measures each of our models (and our detector /
segmentor configs) without and with these switches set: environment variables, or module
attributes by dotted name
(``mmdefscan.ops.kernels.selective_scan_triton.WANTED_PROGRAMS=264``, a Python literal); rows
``NAME [NAME=VALUE]``. The two arms take turns at every iteration, so that both see the same
drift of the device's host (runs in separate processes differ by up to 20%, runs one after the
other in one process by 10-20%). ``--paired`` does the same for the detectors (and for the
segmentors): all their iterations take turns, so the ratio to the peer's config is measured on
the same host. ``--det-shapes`` feeds the detectors batches of several padded shapes in turn
(as mmdet's keep-ratio resize does), instead of one of 800x1344; their rows give the median and
the mean iteration (the schedule's cost, with the shapes that run eagerly). A markdown table is
printed last.
"""
import argparse
import ast
import contextlib
import gc
import importlib
import itertools
import json
import os
import statistics
import time

import torch
import torch.nn as nn

import mmdefscan  # noqa: F401
from mmdefscan.engine import prefer_expandable_segments

MODELS = {
    'DefMamba-T': ('mmdefscan', dict(type='DefMamba', arch='tiny')),
    'DefMamba-S': ('mmdefscan', dict(type='DefMamba', arch='small')),
    'DefMamba-B': ('mmdefscan', dict(type='DefMamba', arch='base')),
    'SpatialMamba-T': ('mmdefscan', dict(type='SpatialMamba', arch='tiny')),
    'SpatialMamba-S': ('mmdefscan', dict(type='SpatialMamba', arch='small')),
    'SpatialMamba-B': ('mmdefscan', dict(type='SpatialMamba', arch='base')),
    'DAMamba-T': ('mmdefscan', dict(type='DAMamba', arch='tiny')),
    'DAMamba-S': ('mmdefscan', dict(type='DAMamba', arch='small')),
    'DAMamba-B': ('mmdefscan', dict(type='DAMamba', arch='base')),
    'Swin-T': ('mmdet', dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2],
                             num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.2)),
    'ConvNeXt-T': ('mmpretrain', dict(type='ConvNeXt', arch='tiny', drop_path_rate=0.1)),
    # timm's implementations (the official DefMamba's reference peers, docs/benchmark.md); also the stand-ins for the mm peers
    # where mmdet / mmpretrain cannot be imported (a GPU image without mmcv's compiled ops)
    'Swin-T/timm': ('timm', 'swin_tiny_patch4_window7_224'),
    'ConvNeXt-T/timm': ('timm', 'convnext_tiny'),
}
TIMM_PEERS = {name: MODELS[f'{name}/timm'][1] for name in ('Swin-T', 'ConvNeXt-T')}


class TimmFeatures(nn.Module):
    def __init__(self, name):
        super().__init__()
        import timm
        self.model = timm.create_model(name, num_classes=0, global_pool='')

    def forward(self, x):
        feat = self.model.forward_features(x)
        return feat.permute(0, 3, 1, 2) if feat.shape[-1] == self.model.num_features else feat


def build_backbone(name, cuda_graph=False):
    scope, cfg = MODELS[name]
    if scope == 'timm':
        return TimmFeatures(cfg)
    if scope != 'mmdefscan':
        try:
            __import__(f'{scope}.models')
        except ImportError as err:
            if name in TIMM_PEERS:
                print(f'{name}: {scope} not importable ({type(err).__name__}: {err}), using timm '
                      f'{TIMM_PEERS[name]}')
                return TimmFeatures(TIMM_PEERS[name])
            raise
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    if scope == 'mmdefscan' and cuda_graph:
        cfg = dict(cfg, cuda_graph=True)
    return registry.build(dict(cfg))


class Classifier(nn.Module):
    """Backbone -> last map -> global average pool -> linear head."""

    def __init__(self, backbone, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.LazyLinear(num_classes)

    def forward(self, x):
        feat = self.backbone(x)
        feat = feat[-1] if isinstance(feat, (list, tuple)) else feat
        return self.head(feat.mean((2, 3)) if feat.dim() == 4 else feat)  # ConvNeXt pools itself


class Timer:
    """CUDA events on the GPU, the wall clock on the CPU; also the time until a call returned,
    the host's share: close to the step time when the host is the bottleneck."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'

    def arms(self, fns, iters, warmup, kept=None):
        """(median seconds, median host seconds, peak GiB or nan, mean seconds) of each of ``fns``,
        called in turn at every iteration: the arms of an A/B see the same drift of the device's
        host, which moves runs made one after the other by 10-20%. ``kept``: for each arm, a
        function giving the bytes its model keeps between steps (read before each step); the peak
        is then that plus what the step allocated above the memory in use when it began (other
        arms' models excluded)."""
        times, host = [[] for _ in fns], [[] for _ in fns]
        peak = [float('nan') if not self.cuda else 0.0 for _ in fns]
        for i in range(warmup + iters):
            for k, fn in enumerate(fns):
                if self.cuda:
                    kept_now = kept[k]() if kept else 0
                    torch.cuda.reset_peak_memory_stats()
                    in_use = torch.cuda.memory_allocated() if kept else 0
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                t0 = time.perf_counter()
                fn()
                returned = time.perf_counter() - t0
                if self.cuda:
                    end.record()
                    torch.cuda.synchronize()
                    step_peak = torch.cuda.max_memory_allocated() - in_use + kept_now
                    peak[k] = max(peak[k], step_peak / 2**30)
                if i >= warmup:  # the warm-up counts for the peak only (a graph's capture)
                    host[k].append(returned)
                    times[k].append(start.elapsed_time(end) / 1e3 if self.cuda else returned)
        return [(statistics.median(t), statistics.median(h), p, statistics.mean(t))
                for t, h, p in zip(times, host, peak)]


def autocast(device, dtype, cache_enabled=True):
    low = {'bf16': torch.bfloat16, 'fp16': torch.float16}
    return torch.autocast(device.type, dtype=low.get(dtype, torch.bfloat16), enabled=dtype in low,
                          cache_enabled=cache_enabled)


def cuda_graph(step, warmup=3):
    """``step`` captured in a CUDA graph at the first call, after a few eager calls on a side
    stream (they compile the Triton kernels and fill the caches); every call replays the graph.
    Tensors are static."""
    graph = None

    def replay():
        nonlocal graph
        if graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        graph.replay()
    return replay


def in_arm(fn, settings):
    """``fn`` that runs with these switches set (an A/B arm, :func:`switched`)."""
    def run():
        with switched(settings):
            fn()
    return run


def free_earlier_models(device):
    """Collect what earlier models left (a captured graph can sit in a reference cycle until the
    collector runs); GiB still allocated before and after, which no row's peak counts."""
    if device.type != 'cuda':
        return None
    before = torch.cuda.memory_allocated()
    gc.collect()
    torch.cuda.empty_cache()
    return round(before / 2**30, 2), round(torch.cuda.memory_allocated() / 2**30, 2)


def release_backbone_graph(backbone):
    """Drop an mmdefscan backbone's captured graph, so that the next dtype captures its own;
    whether the backbone has ``cuda_graph=True``."""
    if getattr(backbone, 'cuda_graph', None) is None:
        return False
    backbone.release_cuda_graph()
    return True


def bench_classification(name, arms, args, device, timer, bb_graphs=False):
    """Rows of one model, per dtype and per A/B arm ((environment variables, label suffix), see
    :func:`ab_runs`); the arms alternate at every warm-up and timed iteration
    (:meth:`Timer.arms`). ``bb_graphs``: our backbone with ``cuda_graph=True``."""
    rows = []
    left_over = free_earlier_models(device)
    torch.manual_seed(0)  # every build of a model (eager, graphed, repeated) the same weights
    model = Classifier(build_backbone(name, bb_graphs)).to(device)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224, device=device))  # materialise the lazy head
    params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    run = torch.compile(model, dynamic=False) if args.compile else model
    graphs = args.cuda_graphs and device.type == 'cuda'
    # a captured optimizer step keeps its step count on the GPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=graphs)
    mode = ('+compile' if args.compile else '') + ('+graphs' if graphs else '') + (
        '+bbgraphs' if bb_graphs else '')
    for dtype in args.dtypes:
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        model.eval()

        def infer():
            with torch.no_grad(), autocast(device, dtype, cache_enabled=not graphs):
                run(x)
        inference = timer.arms([in_arm(cuda_graph(infer) if graphs else infer, settings)
                                for settings, _ in arms], args.iters, args.warmup)
        xt = torch.randn(args.train_batch, 3, 224, 224, device=device)
        target = torch.randint(0, 1000, (args.train_batch,), device=device)
        model.train()
        release_backbone_graph(model.backbone)

        def train():
            with autocast(device, dtype, cache_enabled=not graphs):
                loss = nn.functional.cross_entropy(run(xt), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        training = timer.arms([in_arm(cuda_graph(train) if graphs else train, settings)
                               for settings, _ in arms], args.iters, args.warmup,
                              [lambda: kept_bytes(model, optimizer)] * len(arms))
        for (_, label), (t_inf, host_inf, *_), (t_train, host, peak, _) in zip(
                arms, inference, training):
            rows.append(dict(model=name + label, dtype=dtype + mode, params_M=round(params, 2),
                             infer_img_s=round(args.batch / t_inf, 1),
                             infer_ms=round(t_inf * 1e3, 1),
                             infer_host_ms=round(host_inf * 1e3, 1),
                             train_img_s=round(args.train_batch / t_train, 1),
                             train_peak_GiB=round(peak, 2), train_ms=round(t_train * 1e3, 1),
                             train_host_ms=round(host * 1e3, 1), left_over_GiB=left_over))
            print(rows[-1], flush=True)
    del model, run, optimizer
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


def build_downstream(config, kind, device, cuda_graph=False):
    """(model in train mode, images, data samples) of one training iteration of a full detector
    (2 images of 800x1344) or segmentor (8 of 512x512) on random data."""
    return (build_downstream_model(config, device, cuda_graph), *downstream_batch(kind, device))


def build_downstream_model(config, device, cuda_graph=False):
    """A detector / segmentor config's model in train mode, without pretrained weights;
    ``cuda_graph`` switches on or off the graphs of an mmdefscan backbone, whatever the config
    says."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    # 'mmdet::swin/...' names a config of the installed package (the peer's own recipe)
    cfg = get_config(config) if '::' in config else Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    registry = __import__(f'{cfg.default_scope}.registry', fromlist=['MODELS']).MODELS
    cfg.model.backbone.pop('init_cfg', None)
    if cfg.model.backbone.type.startswith('mmdefscan.'):
        cfg.model.backbone.cuda_graph = cuda_graph
    torch.manual_seed(0)  # the eager and graphed builds the same weights
    return registry.build(cfg.model).to(device).train()


def downstream_batch(kind, device, shape=None, seg_batch=8):
    """(images, data samples) of a detector's batch (2 images, ``shape`` or 800x1344, two boxes
    and masks each, cut to the image) or a segmentor's (``seg_batch`` of 512x512), random."""
    if kind == 'det':
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData
        batch, (h, w) = 2, shape or (800, 1344)
        samples = []
        for _ in range(batch):
            s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                            batch_input_shape=(h, w), scale_factor=(1., 1.)))
            boxes = torch.tensor([[100., 100., 400., 300.], [500., 200., 900., 700.]],
                                 device=device)
            boxes[:, 0::2].clamp_(max=w - 1)  # inside a smaller --det-shapes image
            boxes[:, 1::2].clamp_(max=h - 1)
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, 100:300, 100:400] = True
            masks[1, 200:700, 500:900] = True
            s.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, 2], device=device),
                                          masks=BitmapMasks(masks.numpy(), h, w))
            samples.append(s)
    else:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        batch, (h, w) = seg_batch, (512, 512)
        samples = []
        for _ in range(batch):
            s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
            s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w), device=device))
            samples.append(s)
    return torch.randn(batch, 3, h, w, device=device), samples


def kept_bytes(model, optimizer):
    """Bytes a model keeps between training steps: weights, buffers, optimizer state (the
    gradients are freed by ``zero_grad``), and its backbone's CUDA graphs."""
    tensors = [*model.parameters(), *model.buffers()] + [
        t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors) + graph_bytes(
        getattr(model, 'backbone', model))


def graph_bytes(backbone):
    """Bytes an mmdefscan backbone's CUDA graphs keep: what they hold allocated (outputs,
    gradients, static inputs) and the rest of their pool, where the replays write activations
    (reserved, so ``memory_allocated`` misses it)."""
    cache = getattr(backbone, 'cuda_graph', None)
    if cache is None or cache.pool is None:
        return 0
    return cache.kept_allocated + sum(
        s['total_size'] - s['allocated_size'] for s in torch.cuda.memory_snapshot()
        if tuple(s['segment_pool_id']) == tuple(cache.pool))


def training_iteration(model, batches, optimizer, device, dtype):
    """One training iteration of a detector / segmentor under ``dtype``'s autocast, AdamW step
    included, on the next of ``batches`` ((images, data samples), taken in turn)."""
    batches = itertools.cycle(batches)

    def step():
        x, samples = next(batches)
        with autocast(device, dtype):
            loss, _ = model.parse_losses(model.loss(x, samples))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench_downstream(entries, args, device, timer):
    """Seconds per training iteration of full detectors / segmentors on random data, per dtype:
    every (config, A/B arm) of ``entries`` ((config, kind, arms, cuda_graph)) takes its turn at
    every iteration, as in :func:`bench_classification`. The peak is each model's own: its
    weights and optimizer state, and what its step allocates above the memory in use when it
    begins."""
    built = []
    for config, kind, arms, use_graphs in entries:
        model = build_downstream_model(config, device, use_graphs)
        shapes = args.det_shapes if kind == 'det' and args.det_shapes else [None]
        batches = [downstream_batch(kind, device, shape, args.seg_batch) for shape in shapes]
        built.append((config, arms, model, batches, torch.optim.AdamW(model.parameters(),
                                                                       lr=1e-4)))
    rows = []
    for dtype in args.downstream_dtypes:
        fns, kept, labels = [], [], []
        for config, arms, model, batches, optimizer in built:
            graphed = release_backbone_graph(model.backbone)
            for settings, label in arms:  # each arm takes the shapes in the same order
                step = training_iteration(model, batches, optimizer, device, dtype)
                fns.append(in_arm(step, settings))
                kept.append(lambda m=model, o=optimizer: kept_bytes(m, o))
                labels.append((config + label, dtype + ('+bbgraphs' if graphed else ''), batches))
        timings = timer.arms(fns, args.iters, args.warmup, kept)
        for (config, mode, batches), (seconds, _, peak, mean) in zip(labels, timings):
            shapes = ' '.join(f'{x.shape[2]}x{x.shape[3]}' for x, _ in batches)
            rows.append(dict(config=config, dtype=mode, batch=batches[0][0].shape[0],
                             shape=shapes, s_per_iter=round(seconds, 3),
                             s_mean=round(mean, 3), peak_GiB=round(peak, 2)))
            print(rows[-1], flush=True)
    del built
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


@contextlib.contextmanager
def switched(settings):
    """Set these switches for the block, then restore what was there: environment variables
    (NAME: value) and module attributes (package.module.NAME: a Python literal)."""
    old_env, old_attrs = {}, []
    try:
        for name, value in settings.items():
            if '.' in name:
                module, attr = name.rsplit('.', 1)
                module = importlib.import_module(module)
                old_attrs.append((module, attr, getattr(module, attr)))
                setattr(module, attr, ast.literal_eval(value))
            else:
                old_env[name] = os.environ.get(name)
                os.environ[name] = value
        yield
    finally:
        for module, attr, value in reversed(old_attrs):
            setattr(module, attr, value)
        for name, value in old_env.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def ab_runs(ours, args):
    """(switches to set, label suffix) of each run of a model."""
    if not (ours and args.ab):
        return [({}, '')]
    return [({}, ''), (dict(s.split('=', 1) for s in args.ab), f" [{', '.join(args.ab)}]")]


def parse_shape(text):
    height, width = text.lower().split('x')
    return int(height), int(width)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='*', default=['Swin-T', 'ConvNeXt-T', 'DefMamba-T',
                                                        'DefMamba-S', 'DefMamba-B'],
                        choices=sorted(MODELS))
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--train-batch', type=int, default=64)
    parser.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'],
                        choices=['fp32', 'bf16', 'fp16'])
    parser.add_argument('--downstream-dtypes', nargs='+', default=['fp32', 'fp16'],
                        choices=['fp32', 'bf16', 'fp16'],
                        help="detector / segmentor dtypes (mmcv 2.1's RoIAlign has no bf16)")
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--compile', action='store_true', help='torch.compile every model')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='replay each classification step from a CUDA graph (CUDA only)')
    parser.add_argument('--backbone-graphs', action='store_true',
                        help='our backbones with cuda_graph=True (training replays from graphs)')
    parser.add_argument('--detector', nargs='*', default=[], help='Mask R-CNN configs')
    parser.add_argument('--segmentor', nargs='*', default=[], help='UperNet configs')
    parser.add_argument('--det-shapes', nargs='+', type=parse_shape, metavar='HxW',
                        help='detector batches of these padded shapes, taken in turn (the '
                             'warm-up should cover them all: graphs are captured there)')
    parser.add_argument('--seg-batch', type=int, default=8,
                        help="segmentor images per iteration (mmseg's 8xb2 recipe: 2 per GPU)")
    parser.add_argument('--paired', action='store_true',
                        help='the detectors (and the segmentors) take turns at every iteration')
    parser.add_argument('--ab', '--ab-env', nargs='+', metavar='NAME=VALUE',
                        help='also run our models with these environment variables or module '
                             'attributes (dotted names) set')
    parser.add_argument('--json', help='write all rows here')
    args = parser.parse_args()
    allocator = prefer_expandable_segments()  # as tools/train.py does
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    timer = Timer(device)
    rows = []
    for name in args.models:
        ours = MODELS[name][0] == 'mmdefscan'
        # --backbone-graphs: our models eager, then graphed, as the detectors and segmentors
        both = ours and args.backbone_graphs and device.type == 'cuda'
        for bb_graphs in (False, True) if both else (False,):
            rows += bench_classification(name, ab_runs(ours, args), args, device, timer,
                                         bb_graphs)
    downstream = []
    for kind, configs in (('det', args.detector), ('seg', args.segmentor)):
        entries = [(config, kind, ab_runs('::' not in config, args), False)
                   for config in configs]
        if args.backbone_graphs and device.type == 'cuda':
            entries += [(config, kind, [({}, '')], True) for config in configs
                        if '::' not in config]
        for group in ([entries] if args.paired and entries else [[e] for e in entries]):
            try:  # one broken config (a missing package, an op without a dtype) skips its rows
                downstream += bench_downstream(group, args, device, timer)
            except Exception as err:  # noqa: BLE001
                print(f"{', '.join(e[0] for e in group)}: skipped, {type(err).__name__}: {err}",
                      flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=str(torch.cuda.get_device_name() if device.type == 'cuda'
                                      else 'cpu'), allocator=allocator, classification=rows,
                           downstream=downstream), f, indent=1)
    reference = 'Swin-T/timm' if any(r['model'] == 'Swin-T/timm' for r in rows) else 'Swin-T'
    peer = {r['dtype']: r for r in rows if r['model'] == reference}
    print(f'\n### 224x224, infer batch {args.batch}, train batch {args.train_batch}, {device}, '
          f'PYTORCH_CUDA_ALLOC_CONF={allocator}')
    print(f'| model | dtype | params M | infer img/s | train img/s | train peak GiB |'
          f' infer ms / host ms | train ms / host ms | infer / {reference} |'
          f' train / {reference} |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        ref = peer.get(r['dtype'].replace('+bbgraphs', ''))  # the peer runs eagerly
        ratio = (f"{r['infer_img_s'] / ref['infer_img_s']:.2f}x | "
                 f"{r['train_img_s'] / ref['train_img_s']:.2f}x") if ref else '- | -'
        print(f"| {r['model']} | {r['dtype']} | {r['params_M']} | {r['infer_img_s']} | "
              f"{r['train_img_s']} | {r['train_peak_GiB']} | {r['infer_ms']} / "
              f"{r['infer_host_ms']} | {r['train_ms']} / "
              f"{r['train_host_ms']} | {ratio} |")
    if downstream:
        # with several --det-shapes the mean is the schedule's cost (the median hides the
        # shapes that run eagerly)
        print('\n| config | dtype | batch x shape | s / train iter, median / mean | peak GiB |')
        print('|---|---|---|---|---|')
        for r in downstream:
            print(f"| {r['config']} | {r['dtype']} | {r['batch']} x {r['shape']} | "
                  f"{r['s_per_iter']} / {r['s_mean']} | {r['peak_GiB']} |")


if __name__ == '__main__':
    main()
