"""tools/train.py and tools/test.py end to end on the synthetic data (tiny backbone, few iters)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _refs import REPO, load_tool

TINY_DET = ['model.backbone.arch=tiny', 'model.backbone.dims=[16,32,32,32]',
            'model.backbone.depths=[1,1,1,1]', 'model.neck.in_channels=[16,32,32,32]']
TINY_SEG = ['model.backbone.dims=[16,32,32,32]', 'model.backbone.depths=[1,1,1,1]',
            'model.decode_head.in_channels=[16,32,32,32]', 'model.auxiliary_head.in_channels=32',
            'model.decode_head.channels=32', 'model.auxiliary_head.channels=16']
DET_CFG = 'configs/demo/maskrcnn_defmamba_t_synthetic.py'
SEG_CFG = 'configs/demo/upernet_defmamba_t_synthetic.py'


def run_tool(args, timeout=600, env=None):
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def data_options(root):
    root = root.rstrip('/') + '/'
    return [f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}']


def det_eval_options(root):
    ann = os.path.join(root, 'annotations/instances_validation.json')
    return [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def one_error_line(result, pattern):
    """The tool failed before its run with exactly one line on stderr matching ``pattern``."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert re.search(pattern, result.stderr.strip().splitlines()[-1]), result.stderr[-2000:]


def train(cfg, work_dir, options, iters):
    opts = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
            'randomness.seed=0', *options]
    result = run_tool(['tools/train.py', cfg, '--work-dir', str(work_dir), '--cfg-options', *opts])
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def scalars(work_dir):
    """Training losses per iteration, from MMEngine's json log."""
    logs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    rows = [json.loads(line) for f in logs for line in f.read_text().splitlines()]
    return {row['iter']: row['loss'] for row in rows if 'loss' in row}


@pytest.mark.slow
def test_detection_train_then_test_plain_and_tta(tmp_path, data_root):
    opts = TINY_DET + data_options(data_root) + det_eval_options(data_root)
    train(DET_CFG, tmp_path, opts, iters=2)
    ckpt = tmp_path / 'iter_2.pth'
    assert ckpt.is_file()
    for extra in ([], ['--tta']):
        result = run_tool(['tools/test.py', DET_CFG, str(ckpt), '--work-dir', str(tmp_path / 't'),
                           '--out', str(tmp_path / 'preds.pkl'), '--cfg-options', *opts, *extra])
        assert result.returncode == 0, result.stderr[-4000:]
        out = result.stdout + result.stderr
        assert re.search(r'coco/bbox_mAP: [\d.]+', out) and re.search(r'coco/segm_mAP: [\d.]+', out)
        assert (tmp_path / 'preds.pkl').is_file()


@pytest.mark.slow
def test_segmentation_train_then_test_plain_and_tta(tmp_path, data_root):
    opts = TINY_SEG + data_options(data_root)
    train(SEG_CFG, tmp_path, opts, iters=2)
    for extra in ([], ['--tta']):
        result = run_tool(['tools/test.py', SEG_CFG, str(tmp_path / 'iter_2.pth'), '--work-dir',
                           str(tmp_path / 't'), '--cfg-options', *opts, *extra])
        assert result.returncode == 0, result.stderr[-4000:]
        assert re.search(r'mIoU: [\d.]+', result.stdout + result.stderr)


@pytest.mark.slow
def test_resume_continues_with_the_same_losses(tmp_path, data_root):
    """An interrupted run resumed from its checkpoint (torch.load weights_only default) logs
    the same losses as an uninterrupted one. Dropout/drop path off: torch's RNG is not saved."""
    opts = TINY_SEG + data_options(data_root) + [
        'model.backbone.drop_path_rate=0.0', 'model.decode_head.dropout_ratio=0.0',
        'model.auxiliary_head.dropout_ratio=0.0', 'train_cfg.val_interval=100']
    straight = tmp_path / 'straight'
    train(SEG_CFG, straight, opts, iters=4)
    resumed = tmp_path / 'resumed'
    train(SEG_CFG, resumed, opts + ['default_hooks.checkpoint.interval=2'], iters=2)
    result = run_tool(['tools/train.py', SEG_CFG, '--work-dir', str(resumed), '--resume',
                       '--cfg-options', 'train_cfg.max_iters=4', 'default_hooks.logger.interval=1',
                       'randomness.seed=0', *opts])
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'resumed epoch: 0, iter: 2' in result.stdout + result.stderr
    a, b = scalars(straight), scalars(resumed)
    assert set(a) == {1, 2, 3, 4} and {3, 4} <= set(b)
    for it in (3, 4):
        assert b[it] == pytest.approx(a[it], rel=1e-5), (it, a, b)


@pytest.mark.parametrize('options, message', [
    (['train_dataloader.dataset.data_root=/no/such/dir/'],
     r'^error: FileNotFoundError: train_dataloader\.dataset\.data_root: /no/such/dir/ does not exist'),
    (['model.backbone.drop_path_rte=0.1'],
     r"^error: TypeError: .*DefMamba got unknown keyword\(s\) \['drop_path_rte'\]"),
    (['model.backbone.type=DefMambaa'], r'^error: KeyError: .*DefMambaa is not in the'),
    (['val_evaluator.ann_file=/no/such.json'],
     r'^error: FileNotFoundError: val_evaluator\.ann_file: /no/such\.json does not exist'),
])
def test_bad_config_gives_one_clear_line(tmp_path, data_root, options, message):
    opts = options if 'data_root' in options[0] else (
        data_options(data_root) + det_eval_options(data_root) + options)
    result = run_tool(['tools/train.py', DET_CFG, '--work-dir', str(tmp_path),
                       '--cfg-options', *opts])
    one_error_line(result, message)


TINY_DET_OPTIONS = {'model.backbone.dims': [16, 32, 32, 32], 'model.backbone.depths': [1, 1, 1, 1],
                    'model.neck.in_channels': [16, 32, 32, 32]}


@pytest.fixture(scope='module')
def det_checkpoints(tmp_path_factory):
    """Weights-only checkpoints ('state_dict' and 'meta', no optimizer state, as mmdet's model
    zoo) of the tiny DefMamba detector of TINY_DET: ``right``, and ``damamba``, the same with
    a DAMamba backbone in its place (a DAMamba detector's checkpoint). Returns (the built
    detector, {name: path})."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdefscan.models.backbones import DAMamba
    cfg = Config.fromfile(str(REPO / DET_CFG))
    cfg.merge_from_dict(TINY_DET_OPTIONS)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    state = model.state_dict()
    other = DAMamba(arch=dict(dims=[16, 32, 32, 32], depths=[1, 1, 1, 1],
                              mlp_ratios=[4, 4, 3, 3], head_dim=16)).state_dict()
    damamba = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    damamba.update({f'backbone.{k}': v for k, v in other.items()})
    root = tmp_path_factory.mktemp('checkpoints')
    paths = {}
    for name, weights in (('right', state), ('damamba', damamba)):
        paths[name] = root / f'{name}.pth'
        torch.save({'state_dict': weights, 'meta': {'mmdet_version': '3.3.0'}}, paths[name])
    return model, paths


def test_checkpoint_check_is_strict_for_the_backbone_and_as_permissive_as_mmdet_elsewhere(
        det_checkpoints, tmp_path):
    import torch
    from mmdefscan.engine import check_checkpoint
    from mmdefscan.models.checkpoint import CheckpointError
    model, paths = det_checkpoints
    for purpose in ('test', 'load_from'):  # no optimizer state needed
        check_checkpoint(model, paths['right'], purpose)
    with pytest.raises(CheckpointError, match=r'not a training state to resume'):
        check_checkpoint(model, paths['right'], 'resume')
    state = torch.load(paths['right'])['state_dict']
    head = 'roi_head.bbox_head.fc_cls.weight'
    cases = {  # name: (the state, fits load_from, fits test)
        'other classes': ({**state, head: torch.zeros(5, state[head].shape[1])}, True, False),
        'no neck': ({k: v for k, v in state.items() if not k.startswith('neck.')}, True, False),
        'an extra head': ({**state, 'auxiliary_head.conv.weight': torch.zeros(1)}, True, True),
        'no backbone norm': ({k: v for k, v in state.items()
                              if not k.startswith('backbone.outnorm0.')}, False, False),
        'an extra backbone key': ({**state, 'backbone.extra': torch.zeros(1)}, False, False),
        'as DDP saves it': ({f'module.{k}': v for k, v in state.items()}, True, True)}
    for name, (weights, fits_load_from, fits_test) in cases.items():
        path = tmp_path / 'case.pth'
        torch.save({'state_dict': weights, 'meta': {'epoch': 1, 'iter': 2}}, path)
        for purpose, fits in (('load_from', fits_load_from), ('test', fits_test),
                              ('resume', fits_test)):
            if fits:
                check_checkpoint(model, path, purpose)
            else:
                with pytest.raises(CheckpointError, match=r"does not fit the config's MaskRCNN: "
                                                          r'\d+ (missing|unexpected|shape)'):
                    check_checkpoint(model, path, purpose)


def test_a_checkpoint_of_another_model_fails_before_the_run(det_checkpoints, tmp_path,
                                                            data_root):
    """tools/test.py with a DAMamba detector's checkpoint and the DefMamba config: one line with
    the counts and the first keys, before the run (MMEngine would test random weights)."""
    _, paths = det_checkpoints
    opts = TINY_DET + data_options(data_root) + det_eval_options(data_root)
    result = run_tool(['tools/test.py', DET_CFG, str(paths['damamba']), '--work-dir',
                       str(tmp_path), '--cfg-options', *opts])
    one_error_line(result, r"^error: CheckpointError: test checkpoint \S+damamba\.pth does not "
                           r"fit the config's MaskRCNN: \d+ missing: backbone\.layers\.0\..*; "
                           r'\d+ unexpected: backbone\.norm1\..*')


@pytest.mark.parametrize('option, message', [
    ('load_from', r"^error: CheckpointError: load_from \S+damamba\.pth does not fit the config's "
                  r'MaskRCNN: \d+ missing: backbone\.layers'),
    ('resume', r'^error: CheckpointError: \S+right\.pth: not a training state to resume'),
])
def test_training_refuses_checkpoints_it_cannot_start_from(det_checkpoints, tmp_path, data_root,
                                                           option, message):
    _, paths = det_checkpoints
    opts = TINY_DET + data_options(data_root) + det_eval_options(data_root)
    if option == 'load_from':
        args = ['--cfg-options', *opts, f'load_from={paths["damamba"]}']
    else:
        args = ['--resume', str(paths['right']), '--cfg-options', *opts]
    result = run_tool(['tools/train.py', DET_CFG, '--work-dir', str(tmp_path), *args])
    one_error_line(result, message)


@pytest.mark.parametrize('content, reason', [
    (b'', 'the file is empty'),
    (b'\xaa' * 1000, r'UnpicklingError: Unsupported operand 170'),
])
def test_a_damaged_checkpoint_is_one_line_that_says_so(tmp_path, data_root, content, reason):
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(content)
    from mmdefscan.models.checkpoint import CheckpointError, load_checkpoint_file
    with pytest.raises(CheckpointError, match=rf'broken\.pth: not a readable checkpoint \(truncated '
                                              rf'or corrupt file\?\): {reason}$'):
        load_checkpoint_file(str(broken))
    if content:
        return  # one tool run is enough for the way it is reported
    result = run_tool(['tools/test.py', SEG_CFG, str(broken), '--work-dir', str(tmp_path),
                       '--cfg-options', *TINY_SEG, *data_options(data_root)])
    one_error_line(result, r'^error: CheckpointError: \S+broken\.pth: not a readable checkpoint '
                           r'\(truncated or corrupt file\?\): the file is empty')


BOOM = """
from mmdet.registry import MODELS
from mmdefscan.models.backbones import DefMamba


@MODELS.register_module()
class BoomDefMamba(DefMamba):
    steps = 0

    def forward(self, x):
        if self.training:
            type(self).steps += 1
            if type(self).steps == 2:
                raise RuntimeError('boom at training iteration 2')
        return super().forward(x)
"""


def test_an_error_raised_while_training_keeps_its_traceback(tmp_path, data_root):
    """A RuntimeError inside the model at the second iteration (in a module the config imports)
    is not a config error: it propagates with its traceback, as in mmdet's tools."""
    (tmp_path / 'boom_backbone.py').write_text(BOOM)
    config = tmp_path / 'boom.py'
    config.write_text(f"_base_ = ['{REPO / DET_CFG}']\n"
                      "custom_imports = dict(imports=['mmdefscan', 'boom_backbone'])\n"
                      "model = dict(backbone=dict(type='BoomDefMamba'))\n")
    opts = TINY_DET + data_options(data_root) + det_eval_options(data_root) + [
        'train_cfg.max_iters=3', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=100']
    result = run_tool(['tools/train.py', str(config), '--work-dir', str(tmp_path / 'work'),
                       '--cfg-options', *opts],
                      env={'PYTHONPATH': os.pathsep.join([str(tmp_path), str(REPO)])})
    assert result.returncode == 1
    stderr = result.stderr.strip()
    assert 'Traceback (most recent call last)' in stderr and 'error: ' not in stderr
    assert 'in forward' in stderr and 'boom_backbone.py' in stderr
    assert stderr.splitlines()[-1] == 'RuntimeError: boom at training iteration 2'


@pytest.mark.parametrize('user_setting, cuda_started, expected', [
    (None, False, 'expandable_segments:True'),
    ('max_split_size_mb:256', False, 'max_split_size_mb:256'),  # the user's own is kept
    (None, True, None),  # too late: the allocator read its settings at CUDA's first use
])
def test_the_tools_let_the_cuda_allocator_grow_its_segments(monkeypatch, user_setting,
                                                            cuda_started, expected):
    """run_cli (every tool's entry) sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before
    main() runs, unless the user set the variable: with fixed segments the CUDA graphs' pool of
    the classifiers' training leaves 1-2 GiB unused (docs/cuda_graph.md)."""
    import torch
    from mmdefscan.engine import run_cli
    monkeypatch.setenv('PYTORCH_CUDA_ALLOC_CONF', user_setting or '')  # restored afterwards
    if user_setting is None:
        monkeypatch.delenv('PYTORCH_CUDA_ALLOC_CONF')
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: cuda_started)
    assert run_cli(lambda: os.environ.get('PYTORCH_CUDA_ALLOC_CONF')) == expected


@pytest.mark.slow
def test_two_process_training_with_torchrun(tmp_path, data_root):
    opts = TINY_DET + data_options(data_root) + det_eval_options(data_root) + [
        'train_cfg.max_iters=2', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=2',
        'train_dataloader.batch_size=2']
    result = run_tool(['-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29531',
                       'tools/train.py', DET_CFG, '--launcher', 'pytorch', '--work-dir',
                       str(tmp_path), '--cfg-options', *opts], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    finished = sorted(set(re.findall(r'rank (\d)/2: finished training at iteration 2', result.stdout)))
    assert finished == ['0', '1'], result.stdout[-3000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']


def test_benchmark_ab_env_alternates_the_arms_at_every_iteration(monkeypatch, tmp_path):
    """benchmark.py --ab-env: each of our models runs without and with the variable set, the two
    arms taking turns at every warm-up and timed call (the peer runs once, without); the rows are
    labelled and the environment is restored."""
    import torch
    benchmark = load_tool('benchmark.py')
    seen = []

    class Recorder(torch.nn.Conv2d):  # a stand-in backbone that notes the switch at every call
        def __init__(self, name):
            super().__init__(3, 4, 3, stride=8)
            self.name = name

        def forward(self, x):
            if x.shape[0] > 1:  # not the lazy head's materialising call
                seen.append((self.name, self.training,
                             os.environ.get('MMDEFSCAN_TRITON_MIN_NUMEL')))
            return super().forward(x)
    monkeypatch.setattr(benchmark, 'build_backbone', lambda name, graphs=False: Recorder(name))
    monkeypatch.delenv('MMDEFSCAN_TRITON_MIN_NUMEL', raising=False)
    monkeypatch.setenv('PYTORCH_CUDA_ALLOC_CONF', '')  # restored after the test
    monkeypatch.delenv('PYTORCH_CUDA_ALLOC_CONF')
    out = tmp_path / 'rows.json'
    monkeypatch.setattr(sys, 'argv', [
        'benchmark.py', '--models', 'Swin-T/timm', 'DefMamba-T', '--dtypes', 'fp32',
        '--batch', '2', '--train-batch', '2', '--iters', '2', '--warmup', '1',
        '--ab-env', 'MMDEFSCAN_TRITON_MIN_NUMEL=0', '--json', str(out)])
    benchmark.main()
    arms = [None, '0'] * 3  # one warm-up and two timed calls, each in both arms
    assert seen == ([('Swin-T/timm', False, None)] * 3 + [('Swin-T/timm', True, None)] * 3
                    + [('DefMamba-T', False, arm) for arm in arms]
                    + [('DefMamba-T', True, arm) for arm in arms])
    written = json.loads(out.read_text())
    assert written['allocator'] == 'expandable_segments:True'  # as the tools run
    rows = written['classification']
    assert [r['model'] for r in rows] == [
        'Swin-T/timm', 'DefMamba-T', 'DefMamba-T [MMDEFSCAN_TRITON_MIN_NUMEL=0]']
    assert all(r['train_img_s'] > 0 and r['infer_img_s'] > 0 for r in rows)
    assert 'MMDEFSCAN_TRITON_MIN_NUMEL' not in os.environ


def test_benchmark_paired_detectors_take_turns_with_a_module_attribute_switch(monkeypatch,
                                                                              tmp_path):
    """benchmark.py --paired --ab MODULE.ATTR=VALUE: the iterations of our detector in both arms
    and of the peer's config take turns at every warm-up and timed call; the attribute is set in
    the second arm only, as a Python literal, and restored afterwards."""
    import torch
    from mmdefscan.ops.kernels import selective_scan_triton as kernels
    benchmark = load_tool('benchmark.py')
    seen = []

    class Detector(torch.nn.Module):  # a stand-in for a built config: notes the switch per step
        def __init__(self, config):
            super().__init__()
            self.config, self.backbone = config, torch.nn.Linear(4, 1)

        def loss(self, x, samples):
            seen.append((self.config, kernels.WANTED_PROGRAMS))
            return dict(loss=self.backbone(x).square().mean())

        def parse_losses(self, losses):
            return losses['loss'], {}
    monkeypatch.setattr(benchmark, 'build_downstream_model',
                        lambda config, device, graphs: Detector(config))
    monkeypatch.setattr(benchmark, 'downstream_batch', lambda kind, device, shape, seg_batch: (
        torch.randn(2, 3, 5, 4), None))
    shipped = kernels.WANTED_PROGRAMS
    out = tmp_path / 'rows.json'
    monkeypatch.setattr(sys, 'argv', [
        'benchmark.py', '--models', '--detector', 'ours.py', 'mmdet::peer.py', '--paired',
        '--downstream-dtypes', 'fp32', '--iters', '2', '--warmup', '1',
        '--ab', 'mmdefscan.ops.kernels.selective_scan_triton.WANTED_PROGRAMS=7',
        '--json', str(out)])
    benchmark.main()
    assert seen == [('ours.py', shipped), ('ours.py', 7), ('mmdet::peer.py', shipped)] * 3
    assert kernels.WANTED_PROGRAMS == shipped
    rows = json.loads(out.read_text())['downstream']
    assert [r['config'] for r in rows] == [
        'ours.py', 'ours.py [mmdefscan.ops.kernels.selective_scan_triton.WANTED_PROGRAMS=7]',
        'mmdet::peer.py']
    assert all((r['batch'], r['shape'], r['dtype']) == (2, '5x4', 'fp32') for r in rows)


def test_profile_charges_gpu_idle_to_the_host_range_that_launched_the_next_kernel():
    """profile_backbone.py's idle table: a gap between kernels goes to the innermost module
    range (or backward node) around the launch of the kernel that ends it, on the launching
    thread; overlapping kernels leave no gap; a launch outside named ranges falls back to the
    outermost operator."""
    tool = load_tool('profile_backbone.py')

    def span(name, cat, ts, dur, tid=1, **args):
        return dict(ph='X', name=name, cat=cat, ts=ts, dur=dur, pid=1, tid=tid, args=args)
    events = [
        span('## DefMamba', 'user_annotation', 0, 100),
        span('## LayerNorm', 'user_annotation', 10, 20),
        span('aten::layer_norm', 'cpu_op', 12, 10),
        span('cudaLaunchKernel', 'cuda_runtime', 15, 1, correlation=2),
        span('## Linear', 'user_annotation', 40, 30),
        span('cuLaunchKernelEx', 'cuda_driver', 50, 1, correlation=3),
        span('cuLaunchKernelEx', 'cuda_driver', 60, 1, correlation=4),
        span('aten::mm', 'cpu_op', 150, 10),  # outside every named range
        span('cudaLaunchKernel', 'cuda_runtime', 155, 1, correlation=5),
        span('autograd::engine::evaluate_function: MmBackward0', 'cpu_op', 200, 30, tid=7),
        span('cudaLaunchKernel', 'cuda_runtime', 210, 1, tid=7, correlation=6),
        span('stem', 'kernel', 5, 5, tid=99, correlation=1),
        span('ln', 'kernel', 20, 10, tid=99, correlation=2),     # gap 10, LayerNorm
        span('mm1', 'kernel', 55, 40, tid=99, correlation=3),    # gap 25, Linear
        span('mm2', 'kernel', 80, 10, tid=99, correlation=4),    # overlaps mm1: no gap
        span('mm3', 'kernel', 160, 5, tid=99, correlation=5),    # gap 65, aten::mm
        span('mm_bwd', 'kernel', 215, 5, tid=99, correlation=6),  # gap 50, the backward node
    ]
    assert tool.gpu_idle_by_launcher(events) == {
        '## LayerNorm': (1, 10), '## Linear': (1, 25), 'aten::mm': (1, 65),
        'autograd::engine::evaluate_function: MmBackward0': (1, 50)}


@pytest.mark.parametrize('script', ['bench_kernels.py', 'bench_scan.py', 'profile_backbone.py'])
def test_device_benchmarks_import_and_parse_on_cpu(script):
    """These tools time CUDA only, so CI never runs their main(); ``--help`` still runs their
    imports and argument parser (bench_kernels.py imports helpers of benchmark.py: a rename
    would otherwise surface only on a GPU)."""
    done = subprocess.run([sys.executable, str(REPO / 'tools/analysis' / script), '--help'],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith('usage:')


def test_benchmark_feeds_the_detectors_several_shapes_in_turn(monkeypatch, tmp_path):
    """benchmark.py --det-shapes: every arm of every detector takes the batches' shapes in the
    same order (so the A/B arms see the same shapes), and the rows name the shapes."""
    import torch
    benchmark = load_tool('benchmark.py')
    seen = []

    class Detector(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config, self.backbone = config, torch.nn.Linear(1, 1)

        def loss(self, x, samples):
            seen.append((self.config, os.environ.get('BENCH_ARM'), tuple(x.shape[2:])))
            return dict(loss=self.backbone(x.mean((1, 2, 3))[:, None]).square().mean())

        def parse_losses(self, losses):
            return losses['loss'], {}
    monkeypatch.setattr(benchmark, 'build_downstream_model',
                        lambda config, device, graphs: Detector(config))
    monkeypatch.setattr(benchmark, 'downstream_batch', lambda kind, device, shape, seg_batch: (
        torch.randn(2, 3, *shape), None))
    out = tmp_path / 'rows.json'
    monkeypatch.setattr(sys, 'argv', [
        'benchmark.py', '--models', '--detector', 'ours.py', 'mmdet::peer.py', '--paired',
        '--det-shapes', '8x12', '12x8', '--downstream-dtypes', 'fp32', '--iters', '2',
        '--warmup', '1', '--ab', 'BENCH_ARM=b', '--json', str(out)])
    benchmark.main()
    turns = [('ours.py', None), ('ours.py', 'b'), ('mmdet::peer.py', None)]
    shapes = [(8, 12), (12, 8), (8, 12)]
    assert seen == [(*turn, shape) for shape in shapes for turn in turns]
    rows = json.loads(out.read_text())['downstream']
    assert [r['shape'] for r in rows] == ['8x12 12x8'] * 3


@pytest.mark.parametrize('graphs', [False, True])
def test_benchmark_sets_the_backbone_graphs_whatever_the_config_says(graphs):
    """build_downstream's eager arm is eager even when a config switches ``cuda_graph`` on, and
    its graphed arm has the graphs; the segmentor batch takes ``seg_batch`` images."""
    import torch
    benchmark = load_tool('benchmark.py')
    from mmengine.config import Config
    config = str(REPO / 'configs/upernet_defmamba_t_ade20k.py')
    assert Config.fromfile(config).model.backbone.cuda_graph is True
    model, x, samples = benchmark.build_downstream(config, 'seg', torch.device('cpu'), graphs)
    assert (model.backbone.cuda_graph is not None) == graphs
    x, samples = benchmark.downstream_batch('seg', torch.device('cpu'), seg_batch=2)
    assert x.shape == (2, 3, 512, 512) and len(samples) == 2


def test_benchmark_timer_gives_the_mean_beside_the_median():
    """With several --det-shapes some batches run eagerly: the median hides them, the mean (the
    schedule's cost) does not."""
    import time
    benchmark = load_tool('benchmark.py')
    import torch
    durations = iter([0.0, 0.0, 0.0, 0.08] * 2)
    ((median, _, _, mean), ) = benchmark.Timer(torch.device('cpu')).arms(
        [lambda: time.sleep(next(durations))], iters=4, warmup=4)
    assert median < 0.01 and 0.02 <= mean < 0.04


def test_batch_shape_shares_follow_the_cache_rule_and_the_best_case():
    batch_shapes = load_tool('batch_shapes.py')
    a, b, c = (2, 3, 800, 1088), (2, 3, 800, 1216), (2, 3, 1088, 800)
    stream = [c, a, b, a, b, a, b, b]  # c comes first, but is the rarest
    assert batch_shapes.replayed_share(stream, 1) == 1 / 8
    assert batch_shapes.best_share(stream, 1) == 4 / 8
    assert batch_shapes.replayed_share(stream, 2) == 4 / 8
    assert batch_shapes.best_share(stream, 2) == 7 / 8
    assert batch_shapes.replayed_share(stream, 3) == batch_shapes.best_share(stream, 3) == 1


def test_batch_shapes_counts_a_multi_scale_configs_padded_batches(tmp_path, data_root):
    """The tool runs the config's loader (aspect-ratio batches of 4) and the model's data
    preprocessor (padding to the batch's largest image, size divisor 32) over the synthetic set,
    resized at random to 128x128, 96x160 or 160x96: every batch counted once, shapes padded."""
    config = tmp_path / 'multi_scale.py'
    config.write_text(
        f"_base_ = ['{REPO / DET_CFG}']\n"
        "train_pipeline = [dict(type='LoadImageFromFile'),\n"
        "    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),\n"
        "    dict(type='RandomChoiceResize', scales=[(128, 128), (160, 96), (96, 160)],\n"
        "         keep_ratio=False),\n"
        "    dict(type='PackDetInputs')]\n"
        "train_dataloader = dict(dataset=dict(pipeline=train_pipeline,\n"
        f"                                      data_root='{data_root}/'))\n")
    result = run_tool(['tools/analysis/batch_shapes.py', str(config), '--batches', '30'])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\| 4x3x(\d+)x(\d+) \| (\d+) \| ([\d.]+)% \| ([\d.]+)% \|$',
                      result.stdout, re.M)
    assert len(rows) >= 2 and sum(int(r[2]) for r in rows) == 30, result.stdout
    assert all(int(h) in (96, 128, 160) and int(w) in (96, 128, 160) for h, w, *_ in rows)
    assert rows[-1][4] == '100.0'
    first = re.search(r'^\| 1 \| ([\d.]+)% \| ([\d.]+)% \|$', result.stdout, re.M)
    assert first and first.group(2) == rows[0][3]  # one graph at best: the most frequent shape


def test_benchmark_builds_of_one_config_have_the_same_weights():
    """The eager and graphed builds of a config are compared in one process: their weights (and
    so DefMamba's learned scan order) must not differ by the random initialisation."""
    import torch
    benchmark = load_tool('benchmark.py')
    eager, graphed = (benchmark.build_downstream_model(str(REPO / DET_CFG), torch.device('cpu'), g)
                      for g in (False, True))
    assert graphed.backbone.cuda_graph is not None and eager.backbone.cuda_graph is None
    weights = graphed.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in eager.state_dict().items())


def test_benchmark_counts_all_of_a_graphs_memory(monkeypatch):
    """A graphed model keeps what its captures left allocated (outputs, gradients, static inputs)
    and the rest of its pool's segments (where the replays write activations); other pools'
    segments are not its own."""
    import torch
    from types import SimpleNamespace
    benchmark = load_tool('benchmark.py')
    gib = 2 ** 30
    backbone = SimpleNamespace(cuda_graph=SimpleNamespace(pool=(0, 7), kept_allocated=1 * gib))
    segments = [dict(segment_pool_id=(0, 7), total_size=6 * gib, allocated_size=2 * gib),
                dict(segment_pool_id=[0, 7], total_size=2 * gib, allocated_size=0),
                dict(segment_pool_id=(0, 0), total_size=50 * gib, allocated_size=9 * gib)]
    monkeypatch.setattr(torch.cuda, 'memory_snapshot', lambda: segments)
    assert benchmark.graph_bytes(backbone) == (1 + 4 + 2) * gib
    assert benchmark.graph_bytes(SimpleNamespace(cuda_graph=None)) == 0
