r"""What every scan of a backbone attends to, in closed form, and the effective receptive field.

**Implicit attention.** With its step sizes, B and C fixed, a selective scan is linear in its
input: y = M u with, for channel d and sequence positions s <= t,

.. math::
    M_{d}[t, s] = \sum_n C_{n,t}\, \exp\Big(A_{d,n} \sum_{k=s+1}^{t} \Delta_{d,k}\Big)\,
    \Delta_{d,s} B_{n,s} \;+\; [s = t]\, D_d ,

the scan's "implicit attention" (Spatial-Mamba, section 3). :func:`ssm_rows` computes the rows
of chosen query positions at once from cumulative sums of Delta (no loop over tokens).
:func:`record_scan_attention` maps them back to the pixels of each token mixer's scanned map x
(the map after the mixer's input projection and depthwise conv), so that a row answers "how much
does the mixer's scan output at the query pixel change per unit of x at each pixel", per channel:

* DefMamba (:class:`DeformableSSM`): one M per scan direction; the query's row is taken at its
  position in each direction's sequence and carried back through that direction's reading of
  x (reversal, the deformable points and token order, the fixed continuous / local orders) by
  the transpose of the module's own :meth:`~DeformableSSM.sequences`; the directions are
  averaged as the module merges them. The gate SiLU(z) is left out.
* Spatial-Mamba (:class:`StructureAwareSSM`): the fused state at the query is a depthwise
  dilated convolution of the states h (replicate padding: clamped neighbours), so its row is
  the kernel-weighted sum of the state rows of the query's neighbours, times C, plus D.
* DAMamba (:class:`DASSM`): the scanned sequence is x sampled at the learned points; the row is
  carried back through the transpose of that sampling (:func:`adaptive_sample`).

The data-dependent parts (Delta, B, C, points, order) are those of the given image; rows are
computed in float64.

**Effective receptive field** (Luo et al., 2016, as RepLKNet measures it):
:func:`effective_receptive_field`, the gradient of sum_c ReLU(out[c]) at a stage's centre pixel
with respect to the input image, its absolute value summed over the colour channels, averaged
over images. (The ReLU matters: every stage output ends with a LayerNorm over the channels, so
the plain channel sum at a pixel is constant.)
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.backbones.damamba import DASSM
from ..models.backbones.defmamba import DeformableSSM
from ..models.backbones.spatialmamba import StructureAwareSSM
from ..models.scan_paths import map_stride, record_module_inputs
from ..ops import adaptive_sample

# elements of the largest (channels, queries, states, tokens) block of decays held at once
MAX_BLOCK = 2 ** 24


@dataclass
class ScanAttention:
    """The implicit attention of one token mixer's scan, for the first image of the batch.

    name: the mixer's name in the backbone. ``stride``: image pixels per map pixel (y, x).
    ``queries``: (Q, 2) the query pixels (row, column) on the mixer's map. ``rows``:
    (D, Q, H, W) float64, rows[d, q, i, j] = d y[d, query q] / d x[d, i, j]: the scan output
    of channel d at the query against the scanned map x (channels do not mix inside a scan).
    """
    name: str
    stride: tuple
    queries: torch.Tensor
    rows: torch.Tensor


def ssm_rows(delta, A, B, queries, C=None, D=None):
    """Rows ``queries`` of the selective scan's matrix M (module docstring), in closed form.

    Args:
        delta: (D, L) the step sizes (after the bias and softplus).
        A: (D, N). B, C: (N, L), shared by the channels.
        queries: (Q,) sequence positions t.
        C: None for the state rows: h_t = sum_s rows[:, :, n, s] u_s.
        D: (D,) the skip term, added on the diagonal; None for none.

    Returns:
        (D, Q, L) float64, M[d, queries[q], s]; without C the state rows (D, Q, N, L).
    """
    delta, A, B = delta.double(), A.double(), B.double()
    dim, length = delta.shape
    queries = queries.to(delta.device)
    cumulative = delta.cumsum(-1)
    causal = torch.arange(length, device=delta.device)[None, :] <= queries[:, None]  # (Q, L)
    # sum_{k=s+1..t} Delta_k for s <= t (0 elsewhere, where the row is 0)
    span = torch.where(causal, cumulative[:, queries, None] - cumulative[:, None, :], 0.0)
    inputs = delta[:, None, None, :] * B[None, None] * causal[:, None, :]  # (D, Q, N, L)
    step = max(1, MAX_BLOCK // (len(queries) * A.shape[1] * length))
    rows = []
    for start in range(0, dim, step):  # channel blocks bound the memory of the decays
        block = slice(start, start + step)
        states = torch.exp(span[block, :, None, :] * A[block, None, :, None]) * inputs[block]
        rows.append(states if C is None else
                    torch.einsum('dqnl,qn->dql', states, C.double()[:, queries].T))
    rows = torch.cat(rows)
    if D is not None:
        rows[:, torch.arange(len(queries)), queries] += D.double()[:, None]
    return rows


def transpose_of(linear, rows, shape):
    """The transpose of the linear (or affine) map ``linear`` of a (Q, D, H, W) map, applied to
    its output cotangent ``rows``: (Q, D, H, W)."""
    with torch.enable_grad():
        values = torch.zeros(shape, dtype=rows.dtype, device=rows.device, requires_grad=True)
        grad, = torch.autograd.grad(linear(values), values, rows)
    return grad


def _rows_defmamba(module, tokens, queries):
    x, _ = module.scan_input(tokens[:1])
    height, width = x.shape[2:]
    length, count = height * width, len(queries)
    path = module.DS.points_and_keys(x) if 'deformable' in module.directions else None
    xs, order = module.sequences(x, path)
    dts, Bs, Cs = module.ssm_parameters(xs)
    k = len(module.directions)
    deltas = F.softplus(dts[0].double() + module.dt_projs_bias.double()[..., None])  # (K, D, L)
    A = -module.A_logs.double().exp().view(k, -1, module.d_state)
    Ds = module.Ds.view(k, -1)
    index = queries[:, 0] * width + queries[:, 1]
    rows = []
    for i, direction in enumerate(module.directions):
        if direction == 'forward':
            position = index
        elif direction == 'backward':
            position = length - 1 - index
        else:  # token order[j] is scanned j-th
            position = torch.argsort(order[0])[index]
        rows.append(ssm_rows(deltas[i], A[i], Bs[0, i], position, Cs[0, i], Ds[i]))
    # (Q, K, D, L) in sequence positions, carried back to x by the transpose of the sequences
    rows = torch.stack(rows).permute(2, 0, 1, 3) / k
    if path is not None:
        path = tuple(p.double().expand(count, *p.shape[1:]) for p in path)
    mapped = transpose_of(lambda v: module.sequences(v, path)[0], rows,
                          (count, x.shape[1], height, width))
    return mapped.transpose(0, 1)


def _fusion_taps(fusion, dim, dtype, device):
    """(offsets (T, 2) as (dy, dx), weights (D, T)) of the state fusion's taps; one unit tap
    without a fusion."""
    if fusion is None:
        return (torch.zeros(1, 2, dtype=torch.long),
                torch.ones(dim, 1, dtype=dtype, device=device))
    kernel = fusion.merged_kernel().detach().to(dtype)[:, 0]  # (D, K, K)
    centre = kernel.shape[-1] // 2
    offsets = sorted({(a * r, b * r) for r in fusion.dilations for a in (-1, 0, 1)
                      for b in (-1, 0, 1)})
    offsets = torch.tensor(offsets, dtype=torch.long)
    return offsets, kernel[:, centre + offsets[:, 0], centre + offsets[:, 1]]


def _rows_spatialmamba(module, tokens, queries):
    x, _ = module.scan_input(tokens[:1])
    height, width = x.shape[2:]
    u = x.flatten(2)
    dts, Bs, Cs = module.ssm_parameters(u)
    delta = F.softplus(dts[0].double() + module.dt_projs_bias.double()[:, None])
    offsets, weights = _fusion_taps(module.state_fusion, x.shape[1], torch.float64, x.device)
    offsets = offsets.to(x.device)
    # the neighbours whose states the query's fused state reads (replicate padding: clamped)
    rows_at = (queries[:, None, 0] + offsets[None, :, 0]).clamp(0, height - 1)
    cols_at = (queries[:, None, 1] + offsets[None, :, 1]).clamp(0, width - 1)
    states = ssm_rows(delta, -module.A_logs.double().exp(), Bs[0],
                      (rows_at * width + cols_at).flatten())  # (D, Q * T, N, L)
    states = states.unflatten(1, (len(queries), len(offsets)))
    fused = torch.einsum('dqtnl,dt->dqnl', states, weights)
    index = queries[:, 0] * width + queries[:, 1]
    rows = torch.einsum('dqnl,qn->dql', fused, Cs[0].double()[:, index].T)
    rows[:, torch.arange(len(queries)), index] += module.Ds.double()[:, None]
    return rows.unflatten(-1, (height, width))


def _rows_damamba(module, z, queries):
    z = z[:1]
    x = module.scan_input(z)
    batch, dim, height, width = x.shape
    if module.da_scan is None:
        offsets, u = None, x.flatten(2)
    else:
        offsets = module.da_scan.predict_offsets(z)
        u = adaptive_sample(x, offsets, module.da_scan.groups).flatten(2)
    delta, Bs, Cs = module.ssm_parameters(u)
    delta = F.softplus(delta[0].double() + module.dt_projs_bias.double()[:, None])
    index = queries[:, 0] * width + queries[:, 1]
    rows = ssm_rows(delta, -module.A_logs.double().exp(), Bs[0], index, Cs[0], module.Ds)
    rows = rows.unflatten(-1, (height, width))
    if offsets is None:
        return rows
    offsets = offsets.double().expand(len(queries), -1, -1, -1)
    mapped = transpose_of(lambda v: adaptive_sample(v, offsets, module.da_scan.groups),
                          rows.transpose(0, 1), (len(queries), dim, height, width))
    return mapped.transpose(0, 1)


_MIXERS = {DeformableSSM: _rows_defmamba, StructureAwareSSM: _rows_spatialmamba,
           DASSM: _rows_damamba}


def mixer_map_size(module, mixer_input):
    """(H, W) of the map a mixer scans, from its input (channels-last for DefMamba and
    Spatial-Mamba, channels-first for DAMamba)."""
    return tuple(mixer_input.shape[2:] if isinstance(module, DASSM) else mixer_input.shape[1:3])


def map_queries(points, image_size, map_size):
    """Image pixels (Q, 2) as (y, x) -> the (row, column) of the map pixels that hold them."""
    points = torch.as_tensor(points, dtype=torch.float64).view(-1, 2)
    scale = torch.tensor([map_size[0] / image_size[0], map_size[1] / image_size[1]],
                         dtype=torch.float64)
    cells = (points * scale).floor().long()
    return torch.minimum(cells.clamp(min=0), torch.tensor(map_size) - 1)


@torch.no_grad()
def record_scan_attention(backbone, image, points):
    """The :class:`ScanAttention` of every token mixer of ``backbone`` (DefMamba, Spatial-Mamba
    or DAMamba) on ``image`` (1, 3, H, W), normalised as the backbone expects, for the query
    pixels ``points`` ((Q, 2) image pixels (y, x)), in forward order."""
    inputs = record_module_inputs(backbone, image, tuple(_MIXERS))
    attention = []
    for name, module, mixer_input in inputs:
        size = mixer_map_size(module, mixer_input)
        queries = map_queries(points, image.shape[2:], size)
        rows = _MIXERS[type(module)](module, mixer_input, queries.to(mixer_input.device))
        stride = map_stride(image.shape[2:], size)
        attention.append(ScanAttention(name, stride, queries, rows.cpu()))
    return attention


def effective_receptive_field(backbone, images, stages=None):
    """(S, H, W) float64: for each output stage (all of them, or ``stages``, positions in the
    backbone's outputs), |d sum_c ReLU(out[c, h // 2, w // 2]) / d image| summed over the colour
    channels and averaged over ``images`` (N, 3, H, W), one image at a time, in eval mode."""
    was_training = backbone.training
    backbone.eval()
    total = 0
    try:
        for image in images:
            image = image[None].clone().requires_grad_()
            with torch.enable_grad():
                outs = backbone(image)
                chosen = range(len(outs)) if stages is None else stages
                centres = [F.relu(outs[i][0, :, outs[i].shape[2] // 2,
                                          outs[i].shape[3] // 2]).sum() for i in chosen]
                grads = [torch.autograd.grad(c, image, retain_graph=True)[0] for c in centres]
            total = total + torch.stack([g[0].double().abs().sum(0) for g in grads]).cpu()
    finally:
        backbone.train(was_training)
    return total / len(images)
