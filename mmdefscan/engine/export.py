"""ONNX export of a config's model, and its check in onnxruntime (``tools/deployment``).

What is exported, by the config's scope, from the preprocessed image (B, 3, H, W) (normalised
as the config's ``data_preprocessor`` does, and padded as it pads):

* ``mmpretrain``: backbone + neck + head, the class scores before softmax (``logits``);
* ``mmseg``: the whole segmentor (backbone, decode head), its logits resized to the input
  (``seg_logits`` (B, classes, H, W)), as ``EncoderDecoder.encode_decode`` does; the auxiliary
  head is training-only and not exported;
* ``mmdet``: backbone + neck, the feature pyramid (``feat0`` ...). RPN and RoI heads are not
  exported: their proposal selection, NMS and RoIAlign are data-dependent loops over a
  variable number of boxes, which mmdeploy's rewrites cover (see the README).

The graph is traced by ``torch.onnx.export(dynamo=True)`` (``torch.export`` underneath); the
operators of :mod:`mmdefscan.ops` take their export paths there (:mod:`mmdefscan.ops.tracing`).
"""
import copy
import re
import time

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

OPSET = 18


class Exportable(nn.Module):
    """The exported part of ``model``: ``forward(image)`` and the names of its outputs."""
    output_names = ()

    def __init__(self, model):
        super().__init__()
        self.model = model


class Classifier(Exportable):
    """mmpretrain classifier: image -> class logits."""
    output_names = ('logits', )

    def forward(self, image):
        return self.model(image, mode='tensor')


def adaptive_pool_matrix(size, out, dtype, device):
    """(out, size): adaptive average pooling of one axis as a product; bin i averages
    [floor(i size / out), ceil((i + 1) size / out)), as ``nn.AdaptiveAvgPool2d``."""
    bins = torch.arange(out, device=device)[:, None]
    start, end = bins * size // out, ((bins + 1) * size + out - 1) // out
    taps = torch.arange(size, device=device)
    return ((taps >= start) & (taps < end)).to(dtype) / (end - start).to(dtype)


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for a graph of symbolic size: the exporter writes adaptive
    pooling with kernels fixed at the traced size, so another size would pool wrong bins."""

    def __init__(self, output_size):
        super().__init__()
        size = nn.modules.utils._pair(output_size)
        self.output_size = size

    def forward(self, x):
        rows = adaptive_pool_matrix(x.shape[2], self.output_size[0], x.dtype, x.device)
        columns = adaptive_pool_matrix(x.shape[3], self.output_size[1], x.dtype, x.device)
        return rows @ x @ columns.T


class Segmentor(Exportable):
    """mmseg encoder-decoder: image -> logits at the image's size (``encode_decode``); the
    decode head's adaptive pooling (UperNet's pyramid pooling) as :class:`AdaptiveAvgPool`."""
    output_names = ('seg_logits', )

    def __init__(self, model):
        super().__init__(model)
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.AdaptiveAvgPool2d):
                parent, _, child = name.rpartition('.')
                setattr(model.get_submodule(parent), child, AdaptiveAvgPool(module.output_size))

    def forward(self, image):
        from mmseg.models.utils import resize
        logits = self.model.decode_head(self.model.extract_feat(image))
        return resize(logits, size=image.shape[2:], mode='bilinear',
                      align_corners=self.model.align_corners)


class FeaturePyramid(Exportable):
    """mmdet detector: image -> the neck's feature maps (backbone + neck)."""

    @property
    def output_names(self):
        return tuple(f'feat{i}' for i in range(self.model.neck.num_outs))

    def forward(self, image):
        return tuple(self.model.extract_feat(image))


WRAPPERS = {'mmpretrain': Classifier, 'mmseg': Segmentor, 'mmdet': FeaturePyramid}


def build_exportable(cfg, checkpoint=None):
    """The config's model as an exportable module (see the module docstring), on the CPU in eval
    mode, SyncBN as BatchNorm; weights from ``checkpoint`` (strict) or left at their init."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    from ..models.checkpoint import load_backbone_weights
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in WRAPPERS:
        raise ValueError(f'cannot export a {scope!r} config: only {sorted(WRAPPERS)} configs')
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)  # no init_weights: pretrained files are not needed
    if checkpoint:
        load_backbone_weights(model, checkpoint)
    model = revert_sync_batchnorm(model).cpu().eval()
    return WRAPPERS[scope](model).eval()


# A dynamic graph takes heights and widths in multiples of the backbones' total stride: the
# stages' sizes are then exact multiples and torch.export can prove the size relations the
# operators rely on (with any size it cannot, and its exporter retries more slowly).
STRIDE = 32


def dynamic_shapes(dynamic):
    """torch.export's shapes of the image: batch, and height and width in multiples of
    ``STRIDE``, symbolic; or None (all fixed)."""
    if not dynamic:
        return None
    dim = torch.export.Dim
    return ({0: dim('batch', min=1, max=1024), 2: STRIDE * dim('h', min=1, max=256),
             3: STRIDE * dim('w', min=1, max=256)}, )


_OPERATOR = (r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", r'\b(aten[.:]{1,2}[\w.]+)',
             r'\b([a-z_]+::\w+)')


def failed_operator(err):
    """(the operator an export error names, e.g. ``aten.sort.stable``, or None; the error's
    own one-line summary)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', f'{err}\n{err.__cause__ or ""}')
    # the ONNX exporter's messages end with a summary: "<class '...'>: what went wrong"
    summary = re.search(r'## Exception summary\s+(.+)', text)
    summary = summary.group(1) if summary else (text.strip().splitlines() or [''])[0]
    summary = re.sub(r"^<class '[\w.]+'>: ", '', summary).strip()
    for pattern in _OPERATOR:
        found = re.search(pattern, text)
        if found:
            return '.'.join(g for g in found.groups() if g), summary
    return None, summary


def export_onnx(module, image, path, dynamic=True):
    """Export ``module`` (traced at ``image``; an :class:`Exportable` or any module with
    ``output_names``) to ``path``; with ``dynamic`` batch, height and width are symbolic (see
    :func:`dynamic_shapes`), checked in the written graph. A failure is one RuntimeError that
    names the operator where it can be read from torch's error."""
    import onnx
    if dynamic and (image.shape[2] % STRIDE or image.shape[3] % STRIDE):
        raise ValueError(f'a dynamic export takes heights and widths in multiples of {STRIDE}, '
                         f'got {tuple(image.shape[2:])}')
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module, (image, ), input_names=['image'],
                output_names=list(module.output_names), dynamic_shapes=dynamic_shapes(dynamic),
                opset_version=OPSET, dynamo=True, verbose=False)
    except Exception as err:  # torch raises several types; one line for the user
        operator, summary = failed_operator(err)
        where = f' at operator {operator}' if operator else ''
        name = type(getattr(module, 'model', module)).__name__
        raise RuntimeError(f'{name} cannot be exported to ONNX{where}: {summary}') from err
    program.save(path)
    if dynamic:
        check_dynamic(onnx.load(path, load_external_data=False))
    return path


def check_dynamic(model):
    """Raise if the image input or an output of an ONNX model has fixed batch, height or width:
    an export asked to be dynamic that came out static (a size turned into a constant)."""
    fixed = []
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        axes = [0, 2, 3] if len(dims) == 4 else [0]
        fixed += [f'{value.name}[{axis}] = {dims[axis].dim_value}' for axis in axes
                  if not dims[axis].dim_param]
    if fixed:
        raise RuntimeError('export asked for a dynamic batch, height and width came out static: '
                           + ', '.join(fixed))


def second_shape(height, width):
    """Another size for the check, in multiples of ``STRIDE``: about 3/4 the height (rounded
    down) and 5/4 the width (rounded up)."""
    return (max(STRIDE, height * 3 // 4 // STRIDE * STRIDE), -(-width * 5 // 4 // STRIDE) * STRIDE)


def errors(outputs, references):
    """Max absolute error over all outputs, and the largest of each output's max absolute
    error relative to its largest magnitude."""
    worst_abs = worst_rel = 0.0
    for out, ref in zip(outputs, references):
        ref = ref.detach().double().numpy()
        diff = float(np.abs(out.astype(np.float64) - ref).max())
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.abs(ref).max()), 1e-30))
    return worst_abs, worst_rel


def onnx_session(path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_both(module, session, image):
    """(onnxruntime's outputs, PyTorch's outputs) for one image batch."""
    outputs = session.run(None, {'image': image.numpy()})
    with torch.no_grad():
        references = module(image)
    references = references if isinstance(references, (tuple, list)) else (references, )
    return outputs, references


def verify(module, path, shapes, seed=0):
    """Run the ONNX model in onnxruntime and ``module`` in PyTorch on random images of each
    (batch, 3, H, W) shape; per shape (shape, max abs error, max rel error)."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(seed)
    results = []
    for shape in shapes:
        image = torch.randn(shape, generator=generator)
        results.append((tuple(shape), *errors(*run_both(module, session, image))))
    return results


def float32_noise(module, shape, seed=0):
    """Max relative error of ``module`` in float32 against float64 on the first random image of
    :func:`verify`: the model's own rounding, the scale to read onnxruntime's error against."""
    image = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = module(image)
        exact = copy.deepcopy(module).double()(image.double())
    ours, exact = ((t, ) if torch.is_tensor(t) else t for t in (ours, exact))
    return errors([t.numpy() for t in ours], exact)[1]


def latency(module, path, shape, runs):
    """Median seconds per forward of onnxruntime and of PyTorch (same threads) after a warm-up."""
    session = onnx_session(path)
    image = torch.randn(shape)

    def median(run):
        run()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return float(np.median(times))
    with torch.no_grad():
        torch_s = median(lambda: module(image))
    return median(lambda: session.run(None, {'image': image.numpy()})), torch_s


def log(message):
    print_log(message, logger='current')
