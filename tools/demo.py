"""`make demo`: build DefMamba-T through mmdet's registry, run a forward and a training step.

A smoke check of the installed stack until the synthetic-dataset demo lands (issue 4).
"""
import time

import torch
from mmengine.registry import init_default_scope

import mmdefscan  # noqa: F401  (registers the backbones)


def main():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model = MODELS.build(dict(type='DefMamba', arch='tiny', drop_path_rate=0.1))
    params = sum(p.numel() for p in model.parameters())
    print(f'DefMamba-T: {params / 1e6:.2f} M parameters')
    x = torch.randn(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        outs = model(x)
        print(f'inference 2x3x224x224: {time.perf_counter() - t0:.2f} s ->',
              [tuple(o.shape) for o in outs])
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    loss = sum(o.square().mean() for o in model(x))
    loss.backward()
    optim.step()
    print(f'training step: {time.perf_counter() - t0:.2f} s, loss {loss.item():.4f}')


if __name__ == '__main__':
    main()
