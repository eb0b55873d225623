"""ONNX export (mmdefscan/engine/export.py, tools/deployment/pytorch2onnx.py): tiny models of
each family and of the downstream configs exported with symbolic batch, height and width, run in
onnxruntime at two sizes against PyTorch; the operators' export paths (size caches, stable sort);
the checks that an export came out static or failed at a named operator."""
import subprocess
import sys

import onnx
import pytest
import torch
import torch.nn as nn
from test_backbone_contract import FAMILIES, tiny

from _refs import REPO
from mmdefscan.engine import load_config
from mmdefscan.engine.export import (Exportable, build_exportable, check_dynamic, export_onnx,
                                     second_shape, verify)
from mmdefscan.ops import (DeformableScan, DynamicAdaptiveScan, deformable_scan,
                           dynamic_adaptive_scan)
from mmdefscan.ops.tracing import stable_argsort

RTOL = 1e-4
SIZE = (64, 96)  # export size of the tiny models; verified there and at second_shape(SIZE)


def export_and_verify(module, path, size=SIZE):
    """Export dynamically at (2, 3, *size); max relative error of onnxruntime at the export size
    (batch 1) and at another (batch 2)."""
    export_onnx(module, torch.randn(2, 3, *size), str(path), dynamic=True)
    shapes = [(1, 3, *size), (2, 3, *second_shape(*size))]
    return {shape: rel for shape, _, rel in verify(module, str(path), shapes)}


class Backbone(Exportable):
    """A backbone as an exportable module: the image in, its stage outputs out."""
    output_names = ('stage0', 'stage1', 'stage2', 'stage3')

    def forward(self, image):
        return self.model(image)


def test_damamba_backbone_exports_with_symbolic_size(tmp_path):
    """DAMamba alone; DefMamba is exported inside UperNet, Spatial-Mamba inside Mask R-CNN."""
    backbone = tiny(FAMILIES['damamba'], depths=[1, 1, 1, 1])
    errors = export_and_verify(Backbone(backbone.eval()), tmp_path / 'backbone.onnx')
    assert len(errors) == 2 and max(errors.values()) < RTOL, errors


def tiny_config(path, **options):
    return load_config(str(REPO / path), options)


@pytest.mark.slow
def test_upernet_defmamba_exports_through_the_tool(tmp_path):
    """The whole segmentor of the DefMamba UperNet config (tiny widths) through the command
    line: symbolic size, logits at the input size, both sizes within tolerance."""
    out = tmp_path / 'upernet.onnx'
    options = ['model.backbone.dims=16', 'model.backbone.depths=[1,1,1,1]',
               'model.decode_head.in_channels=[16,32,64,128]', 'model.decode_head.channels=16',
               'model.auxiliary_head.in_channels=64', 'model.auxiliary_head.channels=16']
    run = subprocess.run(
        [sys.executable, 'tools/deployment/pytorch2onnx.py', 'configs/upernet_defmamba_t_ade20k.py',
         '--shape', '64', '64', '--dynamic', '--verify', '--out', str(out),
         '--cfg-options', *options], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    verified = [line for line in run.stdout.splitlines() if 'verify' in line]
    assert [line.split('verify ')[1].split(':')[0] for line in verified] == \
        ['1x3x64x64', '2x3x32x96']
    assert all(float(line.rsplit(' ', 1)[1]) < RTOL for line in verified), verified
    graph = onnx.load(str(out)).graph
    image, logits = (value.type.tensor_type.shape.dim for value in (graph.input[0],
                                                                     graph.output[0]))
    assert [d.dim_param for d in logits[2:]] == [d.dim_param for d in image[2:]]


@pytest.mark.slow
def test_maskrcnn_backbone_and_neck_export(tmp_path):
    cfg = tiny_config('configs/maskrcnn_spatialmamba_t_coco.py', **{
        'model.backbone.dims': 8, 'model.backbone.depths': [1, 1, 1, 1],
        'model.neck.in_channels': [8, 16, 32, 64], 'model.neck.out_channels': 16})
    module = build_exportable(cfg)
    assert module.output_names == ('feat0', 'feat1', 'feat2', 'feat3', 'feat4')
    errors = export_and_verify(module, tmp_path / 'pyramid.onnx')
    assert max(errors.values()) < RTOL, errors


class Pinned(nn.Module):
    """Turns the width into a constant: linspace's ends are read as numbers."""
    output_names = ('y', )

    def forward(self, image):
        return image * torch.linspace(0, 1, image.shape[3])


def test_an_export_that_comes_out_static_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=r'came out static: y\[3\] = 64'):
        export_onnx(Pinned(), torch.randn(2, 3, 64, 64), str(tmp_path / 'pinned.onnx'))
    static = tmp_path / 'static.onnx'
    export_onnx(Pinned(), torch.randn(1, 3, 32, 32), str(static), dynamic=False)
    with pytest.raises(RuntimeError, match=r'image\[0\] = 1, image\[2\] = 32'):
        check_dynamic(onnx.load(str(static)))


class StableSort(nn.Module):
    output_names = ('order', )

    def forward(self, keys):
        return torch.argsort(keys, dim=-1, stable=True)


def test_an_operator_without_onnx_translation_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r'StableSort cannot be exported to ONNX at operator '
                                           r'aten\.sort\.stable'):
        export_onnx(StableSort(), torch.randn(2, 3, 64, 64), str(tmp_path / 'sort.onnx'))


class ExportedSort(nn.Module):
    output_names = ('order', )

    def forward(self, keys):
        return stable_argsort(keys.flatten(1))


def deformable_keys(batch, height, width, generator):
    """Sort keys as DefMamba forms them, tanh(order offset) + the 1-D reference grid, with
    saturated offsets (tanh = +-1 exactly) over a run of tokens and equal offsets over a flat
    region (zero padding), rounded to steps of 1/32: many keys tie, as neighbouring keys of a
    large map do in float32."""
    length = height * width
    offsets = torch.randn(batch, length, generator=generator) * 3
    offsets[:, : length // 4] = 12.0  # saturated
    offsets[:, length // 2: length // 2 + width] = 0.3  # a flat region
    grid = (torch.arange(length) + 0.5) * (2.0 / (length - 1)) - 1
    keys = torch.round((offsets.tanh() + grid) * 32) / 32
    return keys.view(batch, 1, height, width)


def test_the_stable_sort_exports_as_an_order_preserving_topk(tmp_path):
    generator = torch.Generator().manual_seed(0)
    export_onnx(ExportedSort(), deformable_keys(2, 64, 64, generator), str(tmp_path / 'sort.onnx'))
    session_keys = [deformable_keys(1, 32, 64, generator), deformable_keys(2, 96, 32, generator)]
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / 'sort.onnx'),
                                   providers=['CPUExecutionProvider'])
    for keys in session_keys:
        flat = keys.flatten(1)
        assert flat.shape[1] - torch.unique(flat[0]).numel() > flat.shape[1] // 8  # ties
        order, = session.run(None, {'image': keys.numpy()})
        assert torch.equal(torch.from_numpy(order), torch.argsort(flat, dim=-1, stable=True))


SIZE_CACHES = (deformable_scan._normalised_grid, deformable_scan._point_grids,
               deformable_scan._resize_matrices, deformable_scan._table_taps,
               dynamic_adaptive_scan._grid_constants)


def test_tracing_leaves_no_fake_tensors_in_the_size_caches():
    """torch.export runs the operators on FakeTensors: the per-size grid caches must neither be
    read nor filled then, so eager calls afterwards, at the traced size and another, compute with
    real tensors and give what they gave before."""
    torch.manual_seed(0)
    deformable, adaptive = DeformableScan(8).eval(), DynamicAdaptiveScan(8, groups=2).eval()
    nn.init.normal_(adaptive.offset.weight, std=0.5)

    class Scans(nn.Module):
        def forward(self, x):
            return deformable(x)[0], adaptive(x, x)

    inputs = [torch.randn(2, 8, 6, 10), torch.randn(1, 8, 5, 7)]
    with torch.no_grad():
        before = [Scans()(x) for x in inputs]
        for cache in SIZE_CACHES:  # the traced size must not be found in them
            cache.cache_clear()
        torch.export.export(Scans(), (inputs[0], ), strict=False)
        assert sum(cache.cache_info().currsize for cache in SIZE_CACHES) == 0
        after = [Scans()(x) for x in inputs]
    for outs, refs in zip(after, before):
        for out, ref in zip(outs, refs):
            assert not isinstance(out, torch._subclasses.FakeTensor)
            assert torch.equal(out, ref)
