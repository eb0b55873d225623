"""The backbones' ``cuda_graph=True`` option: eager (and unchanged) on CPU and past its number of
shapes; on CUDA the replayed training step and inference forward equal the eager ones (run on
the device)."""
import copy
import itertools
import pickle
from types import SimpleNamespace

import pytest
import torch

from _refs import REPO, max_rel_err
from mmdefscan.models import backbones
from mmdefscan.models.cuda_graph import CudaGraphCache, _graphable

NAMES = ['DefMamba', 'SpatialMamba', 'DAMamba']
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@pytest.fixture
def fake_memory(monkeypatch):
    """Stand-ins for the device's memory in GiB (the captures are faked): plenty free unless a
    test says otherwise."""
    from mmdefscan.models import cuda_graph
    memory = dict(free=100.0, total=140.0, reserved=0.0, allocated=0.0)
    monkeypatch.setattr(cuda_graph, 'free_and_total_memory',
                        lambda device: (memory['free'] * 2**30, memory['total'] * 2**30))
    monkeypatch.setattr(cuda_graph, 'held_memory',
                        lambda device: (memory['reserved'] * 2**30, memory['allocated'] * 2**30))
    return memory


def pair(name, device='cpu', cuda_graph=True, **kwargs):
    """(backbone with cuda_graph, the same weights without), tiny, no drop path."""
    torch.manual_seed(0)
    graphed = getattr(backbones, name)(arch='tiny', drop_path_rate=0.0, cuda_graph=cuda_graph,
                                       **kwargs).to(device)
    eager = getattr(backbones, name)(arch='tiny', drop_path_rate=0.0, **kwargs).to(device)
    eager.load_state_dict(graphed.state_dict())
    return graphed, eager


@pytest.mark.parametrize('name', NAMES)
def test_cuda_graph_option_changes_nothing_on_cpu(name):
    graphed, eager = pair(name)
    assert graphed.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    outs = graphed.train()(x)
    sum(o.sum() for o in outs).backward()
    grad, x.grad = x.grad, None
    outs_eager = eager.train()(x)
    sum(o.sum() for o in outs_eager).backward()
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_eager))
    assert torch.equal(grad, x.grad)
    assert graphed.cuda_graph.graphs == {}  # nothing was captured


def test_cuda_graph_option_from_an_mm_config():
    """``--cfg-options model.backbone.cuda_graph=True`` reaches the backbone through mmseg's
    registry, and a training step of the whole segmentor runs (eagerly on CPU)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(str(REPO / 'configs/upernet_defmamba_t_ade20k.py'))
    cfg.merge_from_dict({'model.backbone.cuda_graph': True, 'model.backbone.init_cfg': None})
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model).train()
    assert isinstance(model.backbone.cuda_graph, CudaGraphCache)
    samples = []  # two images: the pyramid pooling's BatchNorm needs more than one value
    for _ in range(2):
        samples.append(SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                                   pad_shape=(64, 64))))
        samples[-1].gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 64, 64)))
    loss, _ = model.parse_losses(model.loss(torch.randn(2, 3, 64, 64), samples))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.patch_embed[0].weight.grad is not None


def test_cuda_graph_copies_and_pickles_without_the_graph():
    """EMA hooks deepcopy the model and checkpoints may pickle it: the copy starts uncaptured."""
    model = backbones.DefMamba(arch='tiny', cuda_graph=3)
    model.cuda_graph.graphs['captured'] = object()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone.cuda_graph, CudaGraphCache) and clone.cuda_graph.graphs == {}
        assert clone.cuda_graph.max_shapes == 3
    model.release_cuda_graph()
    assert model.cuda_graph.graphs == {} and model.cuda_graph.max_shapes == 3
    assert backbones.DefMamba(arch='tiny').cuda_graph is None
    assert backbones.DefMamba(arch='tiny', cuda_graph=True).cuda_graph.max_shapes == 8


@pytest.mark.parametrize('option', [0, -1, 2.5, 'yes'])
def test_cuda_graph_option_rejects_a_bad_number_of_shapes(option):
    with pytest.raises(ValueError, match='number of input shapes'):
        backbones.DefMamba(arch='tiny', cuda_graph=option)


def test_cuda_graph_with_checkpointing_is_a_clear_error():
    model = backbones.DefMamba(arch='tiny', cuda_graph=True, with_cp=True)
    with pytest.raises(ValueError, match='cannot be combined with with_cp'):
        model.cuda_graph.capture(model, torch.randn(1, 3, 32, 32), key=None)


def test_a_failed_capture_is_one_clear_error():
    """Both captures (training and inference) end a failure with the backbone's name, the first
    line of torch's error and the way out; autocast is entered without its weight cache."""
    from mmdefscan.models.cuda_graph import _capturing
    model = backbones.DefMamba(arch='tiny', cuda_graph=True)
    with pytest.raises(RuntimeError) as failure:
        with _capturing(model, False, 'inference CUDA graph'):
            assert not torch.is_autocast_cache_enabled()
            raise RuntimeError('operation not permitted when stream is capturing\nmore detail')
    assert str(failure.value) == ('DefMamba: capturing the inference CUDA graph failed (operation '
                                  'not permitted when stream is capturing); build it with '
                                  'cuda_graph=False')
    assert torch.is_autocast_cache_enabled()  # restored afterwards


def projection_loss(outs, weights):
    return sum((o.float() * w).mean() for o, w in zip(outs, weights))


@cuda
@pytest.mark.parametrize('name', NAMES)
def test_cuda_graph_trains_like_eager(name, monkeypatch):
    """Three SGD steps with and without the graphs (fp32, TF32 off): the same losses, weight
    updates and BatchNorm statistics (DAMamba's, which the capture's warm-up steps would
    otherwise move); then a batch of another size (past ``cuda_graph=1``) runs eagerly and an
    eval call replays an inference graph.

    The backward is not deterministic (atomic adds in the grid sampler's and the convs' weight
    gradients), and three SGD steps amplify that: a conv bias in front of a norm has a zero true
    gradient, so its update is all noise. So the bar is two more eager runs: per tensor, the
    graph's update may differ from eager's by 4x the largest eager-vs-eager difference of the
    three runs, by 5% of the update, or by four roundings of the weights (a D of 1 moved by 1e-5
    ends one float32 step apart, as Spatial-Mamba's Ds and DAMamba's dt projections can). A lost
    gradient is off by 100%, three extra BatchNorm updates by ~30%. One pair of runs makes a
    noisy bar (Spatial-Mamba's first conv can end several times that pair's difference from
    eager). Inside a capture cuDNN may pick another algorithm, which eager-vs-eager noise does
    not show: a Spatial-Mamba downsampling conv bias can differ by a few percent of its update."""
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    graphed, eager = pair(name, 'cuda', cuda_graph=1)
    eager_runs = [copy.deepcopy(eager) for _ in range(2)]
    x = torch.randn(4, 3, 128, 128, device='cuda')
    with torch.no_grad():
        weights = [torch.randn_like(o) for o in eager.eval()(x)]
    start = {k: v.clone() for k, v in eager.state_dict().items()}

    def train(model):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(3):
            loss = projection_loss(model(x), weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses
    losses, losses_graphed = train(eager), train(graphed)
    for model in eager_runs:
        train(model)
    assert len(graphed.cuda_graph.graphs) == 1
    assert losses_graphed == pytest.approx(losses, rel=1e-4, abs=1e-7)
    for key, a in graphed.state_dict().items():
        b = eager.state_dict()[key]
        b1, b2 = (model.state_dict()[key] for model in eager_runs)
        if a.is_floating_point():
            update = b - start[key]
            noise = max((b1 - b).abs().max(), (b2 - b).abs().max(), (b2 - b1).abs().max())
            rounding = torch.finfo(b.dtype).eps * b.abs().max()
            allowed = max(4 * noise, 0.05 * update.abs().max(), 4 * rounding, 1e-12)
            assert (a - b).abs().max() <= allowed, \
                (key, float((a - b).abs().max()), float(noise), float(update.abs().max()))
        else:
            assert torch.equal(a, b), key  # BatchNorm's num_batches_tracked
    eager.load_state_dict(graphed.state_dict())
    small, small_eager = graphed(x[:2]), eager(x[:2])  # another shape: eager
    assert len(graphed.cuda_graph.graphs) == 1
    assert all(max_rel_err(a, b) < 1e-6 for a, b in zip(small, small_eager))
    with torch.no_grad():
        outs, outs_eager = graphed.eval()(x), eager.eval()(x)
    assert [key[-1] for key in graphed.cuda_graph.graphs] == [True, False]
    assert all(max_rel_err(a, b) < 1e-6 for a, b in zip(outs, outs_eager))


@cuda
@pytest.mark.parametrize('name', NAMES)
def test_cuda_graph_infers_like_eager(name, monkeypatch):
    """Eval forwards without grad replay an inference graph: fp32 outputs equal eager's (TF32
    off), bf16 ones much closer to eager bf16 than eager bf16 is to fp32; each call returns
    its own tensors (the next replay does not change them); no_grad and inference_mode each
    capture once."""
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    graphed, eager = pair(name, 'cuda')
    graphed.eval(), eager.eval()
    x, y = (torch.randn(2, 3, 96, 128, device='cuda') for _ in range(2))

    def run(model, inputs, dtype=None, mode=torch.no_grad):
        with mode(), torch.autocast('cuda', dtype=dtype or torch.bfloat16,
                                    enabled=dtype is not None):
            return [[o.float() for o in model(i)] for i in inputs]
    (ex, ey), (gx, gy) = run(eager, (x, y)), run(graphed, (x, y))  # captures at x, replays y
    assert all(max_rel_err(a, b) < 1e-6 for a, b in zip(gx + gy, ex + ey))
    (gx_again,) = run(graphed, (x,), mode=torch.inference_mode)
    assert all(max_rel_err(a, b) < 1e-6 for a, b in zip(gx_again, ex))
    (bx,), (gbx,) = run(eager, (x,), torch.bfloat16), run(graphed, (x,), torch.bfloat16)
    for g, b, f in zip(gbx, bx, ex):
        assert (g - b).norm() <= 0.5 * (b - f).norm()
    keys = list(graphed.cuda_graph.graphs)
    assert [(k[3], k[-2], k[-1]) for k in keys] == [
        (False, False, False), (False, True, False), (torch.bfloat16, False, False)]


@cuda
@pytest.mark.parametrize('name', NAMES)
def test_cuda_graph_under_bf16_autocast(name):
    """The replayed step is captured under bf16 autocast (the weights cast inside the graph):
    its loss and gradients are much closer to eager bf16 than eager bf16 is to fp32."""
    graphed, eager = pair(name, 'cuda')
    graphed.train(), eager.train()
    x = torch.randn(4, 3, 128, 128, device='cuda')
    weights = []

    def step(model, dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            outs = model(x)
        if not weights:
            weights.extend(torch.randn(o.shape, device='cuda') for o in outs)
        loss = projection_loss(outs, weights)
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        return loss.detach(), torch.cat([g.flatten().float() for g in grads])
    loss_fp32, grads_fp32 = step(eager, torch.float32)
    loss_bf16, grads_bf16 = step(eager, torch.bfloat16)
    step(graphed, torch.bfloat16)  # captures
    loss_graph, grads_graph = step(graphed, torch.bfloat16)  # replays
    assert [key[3] for key in graphed.cuda_graph.graphs] == [torch.bfloat16]
    assert (loss_graph - loss_bf16).abs() <= 0.5 * (loss_bf16 - loss_fp32).abs()
    assert (grads_graph - grads_bf16).norm() <= 0.5 * (grads_bf16 - grads_fp32).norm()


@cuda
@pytest.mark.parametrize('name', NAMES)
def test_cuda_graph_replays_several_shapes_and_accumulates(name, monkeypatch):
    """Two input shapes taking turns (A, B, A, B: A replays after B was captured into the
    shared pool), gradients accumulated over the four backwards without zero_grad: the same
    gradients as eager (fp32, TF32 off). Overwritten buffers or a lost accumulation are off by
    a quarter or more (one of four terms); the bar is 1e-2 of each gradient's largest value (or
    of 1e-3 of the model's). Noise reaches about 2e-4 on a GPU (the first conv's weight), so a
    bar of 1e-4 would fail on noise."""
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    graphed, eager = pair(name, 'cuda')
    inputs = [torch.randn(2, 3, 128, 128, device='cuda'), torch.randn(2, 3, 96, 160, device='cuda')]

    def accumulate(model):
        model.train().zero_grad(set_to_none=True)
        for x in inputs * 2:
            sum(o.float().pow(2).mean() for o in model(x)).backward()
        return [p.grad for p in model.parameters()]
    grads, graph_grads = accumulate(eager), accumulate(graphed)
    assert len(graphed.cuda_graph.graphs) == 2
    floor = 1e-3 * max(float(g.abs().max()) for g in grads if g is not None)
    for (key, _), a, b in zip(graphed.named_parameters(), graph_grads, grads):
        assert (a is None) == (b is None), key
        if b is not None:
            assert float((a - b).abs().max()) <= 1e-2 * max(float(b.abs().max()), floor), key


@cuda
def test_replayed_gradients_are_not_the_graphs_buffers():
    """After a replayed backward, another replay (a gradient for the input only, nothing
    accumulated) must leave ``.grad`` alone. Without the cache's copies, autograd keeps the
    graph's static buffers as most of DefMamba-T's gradients."""
    torch.manual_seed(0)
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).cuda().train()
    x1, x2 = (torch.randn(2, 3, 128, 128, device='cuda', requires_grad=True) for _ in range(2))
    sum(o.pow(2).mean() for o in model(x1)).backward()
    grads = {key: p.grad.clone() for key, p in model.named_parameters()}
    torch.autograd.grad(sum(o.pow(2).mean() for o in model(x2)), x2)
    assert len(model.cuda_graph.graphs) == 1
    for key, p in model.named_parameters():
        assert torch.equal(p.grad, grads[key]), key


@cuda
def test_cuda_graph_under_distributed_data_parallel(monkeypatch):
    """DistributedDataParallel (one rank, NCCL, as ``tools/train.py --launcher pytorch`` wraps
    the model) around a graphed backbone: the capture runs inside DDP's forward, its reducer
    gets the replayed gradients through autograd. Two shapes, two steps each: every step's
    gradients equal eager DDP's (fp32, TF32 off; the bar as in the accumulation test)."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        port = free.getsockname()[1]
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        graphed, eager = pair('DefMamba', 'cuda')
        inputs = [torch.randn(2, 3, 128, 128, device='cuda'),
                  torch.randn(2, 3, 96, 160, device='cuda')]

        def steps(model):
            ddp = DistributedDataParallel(model.train(), device_ids=[torch.cuda.current_device()])
            grads = []
            for x in inputs * 2:
                ddp.zero_grad(set_to_none=True)
                sum(o.pow(2).mean() for o in ddp(x)).backward()
                grads.append([p.grad.clone() for p in model.parameters()])
            return grads
        reference, replayed = steps(eager), steps(graphed)
    finally:
        dist.destroy_process_group()
    assert len(graphed.cuda_graph.graphs) == 2
    for step, (grads, graph_grads) in enumerate(zip(reference, replayed)):
        floor = 1e-3 * max(float(g.abs().max()) for g in grads)
        for (key, _), a, b in zip(graphed.named_parameters(), graph_grads, grads):
            assert float((a - b).abs().max()) <= 1e-2 * max(float(b.abs().max()), floor), \
                (step, key)


class _Replay(torch.autograd.Function):
    """Stands in for the graph's replay on CPU: one custom autograd node over all outputs."""

    @staticmethod
    def forward(ctx, *outs):
        return tuple(o.detach().clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        return grads


def test_a_second_forward_before_the_backward_runs_eagerly(monkeypatch):
    """Two views through the backbone before one backward (SimSiam-style): the graph's buffers
    hold the first, so the second must not replay; after the backward, replay again."""
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    cache = model.cuda_graph
    replays = []

    def replay(x, *params):
        replays.append(x)
        return _Replay.apply(*model.forward_eager(x))
    x = torch.randn(1, 3, 32, 32)
    cache.graphs[cache.state(model, x)] = replay
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    first = model(x)
    second = model(x)
    assert len(replays) == 1 and cache.in_use()
    (sum(o.sum() for o in first) + sum(o.sum() for o in second)).backward()
    assert not cache.in_use()
    third = model(x)
    assert len(replays) == 2
    del third  # a forward whose outputs are dropped without a backward frees the buffers
    assert not cache.in_use()
    model(x)
    assert len(replays) == 3


def test_cuda_graph_captures_each_new_input_up_to_its_number(monkeypatch, fake_memory):
    """Detection batches come in several padded shapes: each new one is captured until
    ``cuda_graph=N`` graphs exist, a known one replays its own graph, and later new ones run
    eagerly."""
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=2).train()
    cache = model.cuda_graph
    captured, replayed = [], []

    def capture(backbone, x, key):
        captured.append(tuple(x.shape))
        return lambda x, *params: replayed.append(tuple(x.shape)) or _Replay.apply(
            *backbone.forward_eager(x))
    monkeypatch.setattr(cache, 'capture', capture)
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    shapes = [(1, 3, 32, 32), (1, 3, 32, 64), (1, 3, 32, 32), (1, 3, 64, 32), (1, 3, 32, 64)]
    for shape in shapes:
        x = torch.randn(shape)
        outs = model(x)
        sum(o.sum() for o in outs).backward()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, model.forward_eager(x)))
    assert captured == shapes[:2]
    assert replayed == [shapes[0], shapes[1], shapes[0], shapes[4]]  # the third shape: eager
    assert 'full training' in cache.reported


def test_which_calls_the_graphs_take():
    """On CUDA: training forwards with grad and eval forwards without; not a training forward
    under no_grad (BatchNorm would update inside a graph) nor an eval one with grad."""
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True)
    on_cuda, on_cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    taken = {}
    for training, grad in itertools.product((True, False), repeat=2):
        model.train(training)
        with torch.set_grad_enabled(grad):
            taken[training, grad] = CudaGraphCache.applies(model, on_cuda)
            assert not CudaGraphCache.applies(model, on_cpu)
        with torch.inference_mode():
            assert CudaGraphCache.applies(model, on_cuda) == (not training)
    assert taken == {(True, True): True, (True, False): False, (False, True): False,
                     (False, False): True}


def test_inference_graphs_have_their_own_number_and_key(monkeypatch, fake_memory):
    """``cuda_graph=2`` keeps two training graphs and two inference graphs; no_grad and
    inference_mode calls get graphs of their own (a tensor made in one cannot be written in
    the other); an eval call replays without the parameters and is not counted in the training
    calls' log."""
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=2)
    cache = model.cuda_graph
    captured = []

    def capture(backbone, x, key):
        captured.append((tuple(x.shape), key[-2], key[-1]))
        if key[-1]:
            return lambda x, *params: _Replay.apply(*backbone.forward_eager(x))
        return lambda x: tuple(o + 1 for o in backbone.forward_eager(x))  # marks a replay
    monkeypatch.setattr(cache, 'capture', capture)
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(
        lambda backbone, x: backbone.training == torch.is_grad_enabled()))
    x, other = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 64)
    sum(o.sum() for o in model.train()(x)).backward()
    model.eval()
    with torch.no_grad():
        for _ in range(2):  # captured, then replayed
            replayed, eager = model(x), model.forward_eager(x)
            assert all(torch.allclose(a, b + 1) for a, b in zip(replayed, eager))
    with torch.inference_mode():
        model(x)
    with torch.no_grad():  # a third inference input: eager
        assert all(torch.equal(a, b) for a, b in zip(model(other), model.forward_eager(other)))
    assert captured == [((1, 3, 32, 32), False, True), ((1, 3, 32, 32), False, False),
                        ((1, 3, 32, 32), True, False)]
    assert 'full inference' in cache.reported and 'full training' not in cache.reported
    assert sum(cache.calls.values()) == 1  # the training call


class _StaticGradients(torch.autograd.Function):
    """Stands in for make_graphed_callables' node: every backward writes the same buffer (the
    graph's static gradient) and returns it detached."""

    @staticmethod
    def forward(ctx, x, weight, buffer):
        ctx.save_for_backward(x)
        ctx.buffer = buffer
        return x * weight

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        ctx.buffer.copy_((grad * x).sum(0))
        return None, ctx.buffer.detach(), None


class _Linear(torch.nn.Module):
    """A one-weight "backbone" for :class:`CudaGraphCache` on CPU."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward_eager(self, x):
        return (x * self.weight,)


def test_replayed_gradients_accumulate(monkeypatch, fake_memory):
    """Gradient accumulation (mmengine's ``accumulative_counts``) over replays: autograd would
    keep the graph's static gradient buffer as ``.grad``, and the next replay would overwrite
    the sum. The cache hands copies to autograd, so two backwards add up."""
    backbone = _Linear().train()
    cache = CudaGraphCache()
    buffer = torch.zeros(3)
    monkeypatch.setattr(cache, 'capture', lambda backbone, x, key: lambda x, weight: (
        _StaticGradients.apply(x, weight, buffer),))
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    x1, x2 = torch.tensor([[1., 2., 3.]]), torch.tensor([[10., 20., 30.]])
    for x in (x1, x2):
        cache(backbone, x)[0].sum().backward()
    assert torch.equal(backbone.weight.grad, (x1 + x2)[0])
    assert backbone.weight.grad.data_ptr() != buffer.data_ptr()


def test_the_capture_runs_on_stand_ins_of_the_parameters():
    """What the capture records (``_graphable``): the eager forward on new leaves that share the
    parameters' storage, so that its backward never reaches the parameters' own gradient
    accumulators (which DDP keeps on the default stream); the same outputs and gradients."""
    torch.manual_seed(0)
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    forward, stand_ins = _graphable(model)
    params = list(model.parameters())
    assert len(stand_ins) == len(params)
    assert all(s.data_ptr() == p.data_ptr() and s is not p and s.is_leaf
               for s, p in zip(stand_ins, params))
    x = torch.randn(1, 3, 64, 64)
    outs = forward(x, *stand_ins)
    grads = torch.autograd.grad(sum(o.square().mean() for o in outs), stand_ins,
                                allow_unused=True)
    assert all(p.grad is None for p in params)  # nothing reached the parameters
    outs_eager = model.forward_eager(x)
    sum(o.square().mean() for o in outs_eager).backward()
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_eager))
    for (key, p), grad in zip(model.named_parameters(), grads):
        assert (grad is None) == (p.grad is None), key
        assert grad is None or torch.equal(grad, p.grad), key


@pytest.mark.parametrize('distributed', [False, True])
def test_the_capture_takes_stand_ins_with_and_without_torch_distributed(distributed, monkeypatch):
    """Wiring of the capture (``make_graphed_callables`` recorded, not run): with or without an
    initialised process group (DDP) it graphs a function of (x, *stand-ins) on the parameters'
    storage, and the cache calls it with (x, *parameters)."""
    import torch.distributed as dist
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    x = torch.randn(1, 3, 32, 32)
    recorded = []

    def make_graphed_callables(forward, sample_args, **kwargs):
        recorded.append((forward, sample_args))
        return forward
    monkeypatch.setattr(torch.cuda, 'make_graphed_callables', make_graphed_callables)
    monkeypatch.setattr(torch.cuda, 'graph_pool_handle', lambda: (0, 1))
    if distributed:
        dist.init_process_group('gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)
    try:
        graphed = model.cuda_graph.capture(model, x, model.cuda_graph.state(model, x))
    finally:
        if distributed:
            dist.destroy_process_group()
    (forward, sample_args), = recorded
    params = list(model.parameters())
    assert not isinstance(forward, torch.nn.Module) and len(sample_args) == 1 + len(params)
    assert all(s.data_ptr() == p.data_ptr() and s is not p
               for s, p in zip(sample_args[1:], params))
    outs = graphed(x, *params)
    assert all(torch.equal(a, b) for a, b in zip(outs, model.forward_eager(x)))


@pytest.mark.parametrize('world_size', [1, 2])
def test_syncbatchnorm_under_several_processes_runs_eagerly(world_size, monkeypatch, fake_memory):
    """DAMamba's default norm is SyncBatchNorm: with more than one process its training forward
    would run collectives, which were never captured here, so it runs eagerly and says so once;
    with one process (no collectives) it is captured. (The process group is faked, so the
    forwards are stand-ins that name the path taken.)"""
    import torch.distributed as dist

    from mmdefscan.models import cuda_graph
    model = backbones.DAMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    captured = []
    eager, graph = (torch.zeros(1),), (torch.ones(1),)
    monkeypatch.setattr(model, 'forward_eager', lambda x: eager)
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    monkeypatch.setattr(CudaGraphCache, 'capture', lambda self, backbone, x, key: captured.append(
        key) or (lambda x, *params: graph))
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: world_size)
    messages = []
    monkeypatch.setattr(cuda_graph, 'print_log', lambda message, logger: messages.append(message))
    x = torch.randn(2, 3, 64, 64)
    paths = [model.cuda_graph(model, x) for _ in range(2)]
    if world_size > 1:
        assert all(p is eager for p in paths) and not captured
        assert sum('SyncBatchNorm' in m for m in messages) == 1
    else:
        assert all(p is graph for p in paths) and len(captured) == 1
        assert not any('SyncBatchNorm' in m for m in messages)


def test_the_log_counts_replayed_and_eager_calls(monkeypatch, fake_memory):
    """Every REPORT_EVERY training calls of which some ran eagerly, one line counts the replayed
    and the eager ones by reason; a window that replayed throughout logs nothing."""
    from mmdefscan.models import cuda_graph
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=1).train()
    cache = model.cuda_graph
    graph = (torch.ones(1),)
    monkeypatch.setattr(model, 'forward_eager', lambda x: (torch.zeros(1),))
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    monkeypatch.setattr(cache, 'capture', lambda backbone, x, key: lambda x, *params: graph)
    monkeypatch.setattr(cuda_graph, 'REPORT_EVERY', 5)
    messages = []
    monkeypatch.setattr(cuda_graph, 'print_log', lambda message, logger: messages.append(message))
    small, large = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)
    for x in [small, small, large, small, large]:
        model(x)
    counts = [m for m in messages if 'training calls' in m]
    assert counts == ['DefMamba: cuda_graph, the last 5 training calls: 3 replayed from 1 '
                      'graph; eager: 2 past the limit of graphs']
    for _ in range(5):
        model(small)
    assert len([m for m in messages if 'training calls' in m]) == 1


def test_captures_stop_when_the_device_runs_short_of_memory(monkeypatch, fake_memory):
    """A detector's shapes are captured while the device keeps room: besides the next capture
    (expected to cost the largest growth of reserved or allocated memory so far), a tenth of its
    memory or that cost, whichever is larger, must stay free. The first refusal is logged with the
    figures and ends the captures; the graphs already captured still replay."""
    from mmdefscan.models import cuda_graph
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    cache = model.cuda_graph
    fake_memory.update(free=9.0, total=20.0)
    captured, costs = [], []
    # growth of (reserved, allocated) per capture: the first takes its pool from cached blocks
    growth = iter([(0.0, 1.5), (2.0, 0.5), (2.0, 0.5)])

    def capture(backbone, x, key):  # each capture takes 2 GiB from the device
        captured.append(tuple(x.shape))
        costs.append(cache.capture_cost / 2**30)
        fake_memory['free'] -= 2.0
        reserved, allocated = next(growth)
        fake_memory['reserved'] += reserved
        fake_memory['allocated'] += allocated
        return lambda x, *params: (torch.ones(1),)
    monkeypatch.setattr(cache, 'capture', capture)
    monkeypatch.setattr(model, 'forward_eager', lambda x: (torch.zeros(1),))
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    messages = []
    monkeypatch.setattr(cuda_graph, 'print_log', lambda message, logger: messages.append(message))
    shapes = [(1, 3, 32, 32 * n) for n in range(1, 6)]
    path = {1.0: 'graph', 0.0: 'eager'}
    paths = [path[cache(model, torch.zeros(shape))[0].item()] for shape in shapes + shapes[:1]]
    # free 9 -> 7 -> 5 -> 3 GiB; the fourth needs 2 + max(2, 2) = 4
    assert captured == shapes[:3] and costs == [0.0, 1.5, 2.0]
    assert cache.capture_cost == 2 * 2**30
    assert cache.kept_allocated == 2.5 * 2**30  # the growths of allocated memory, summed
    assert paths == ['graph'] * 3 + ['eager'] * 2 + ['graph']
    held = [m.split(', ')[-1] for m in messages if 'captured the training forward' in m]
    assert held == [f'{gib} GiB more held ({n} of at most 8 inputs)'
                    for n, gib in ((1, '1.50'), (2, '2.00'), (3, '2.00'))]
    refusals = [m for m in messages if 'needed for another capture' in m]
    assert refusals == ['DefMamba: cuda_graph: 3.0 GiB free on the device, 4.0 GiB needed for '
                        'another capture (the largest so far took 2.0 GiB); this '
                        'input (1, 3, 32, 128) and any other new one run eagerly; 3 graphs replay']
    fake_memory['free'] = 50.0  # memory freed later does not restart the captures
    assert path[cache(model, torch.zeros(1, 3, 64, 64))[0].item()] == 'eager'
    assert len(captured) == 3


def test_the_first_capture_keeps_a_tenth_of_the_device_free(monkeypatch, fake_memory):
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True).train()
    monkeypatch.setattr(model.cuda_graph, 'capture', lambda *args: pytest.fail('captured'))
    eager = (torch.zeros(1),)
    monkeypatch.setattr(model, 'forward_eager', lambda x: eager)
    monkeypatch.setattr(CudaGraphCache, 'applies', staticmethod(lambda backbone, x: True))
    fake_memory.update(free=13.9, total=140.0)
    assert model(torch.zeros(1, 3, 32, 32)) is eager
    assert 'memory' in model.cuda_graph.reported


@cuda
def test_a_full_device_runs_new_shapes_eagerly():
    """On the GPU: with the device's memory taken by another tensor, a new shape is not captured
    (it runs eagerly, with eager outputs) and the graph captured before keeps replaying."""
    graphed, eager = pair('DefMamba', 'cuda', cuda_graph=True)
    graphed.train(), eager.train()
    first, second = torch.randn(2, 3, 64, 64, device='cuda'), torch.randn(2, 3, 64, 96,
                                                                          device='cuda')
    sum(o.sum() for o in graphed(first)).backward()
    assert len(graphed.cuda_graph.graphs) == 1 and graphed.cuda_graph.capture_cost > 0
    free, total = torch.cuda.mem_get_info()
    filler = torch.empty(int(free - 0.05 * total), dtype=torch.uint8, device='cuda')
    try:
        for x in (second, first):
            outs = graphed(x)
            expected = eager(x)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(outs, expected))
            sum(o.sum() for o in outs).backward()
        assert len(graphed.cuda_graph.graphs) == 1 and graphed.cuda_graph.out_of_room
        assert graphed.cuda_graph.calls == {None: 2, 'short of device memory': 1}
    finally:
        del filler


def test_releasing_the_graphs_frees_what_sits_in_reference_cycles():
    """make_graphed_callables makes a class per capture, and classes sit in reference cycles:
    dropping the cache alone leaves the graphs' memory to the next collection."""
    import gc
    import weakref

    class Graph:  # stands in for a graphed callable: a class, so in a cycle
        pass
    model = backbones.DefMamba(arch='tiny', drop_path_rate=0.0, cuda_graph=True)
    model.cuda_graph.graphs['shape'] = Graph
    graph = weakref.ref(Graph)
    del Graph
    gc.disable()
    try:
        model.release_cuda_graph()
        assert graph() is None and not model.cuda_graph.graphs
    finally:
        gc.enable()
