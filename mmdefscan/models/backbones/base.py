"""What every mmdefscan backbone shares: strict pretrained loading, frozen stages, input checks."""
from mmengine.model import BaseModule

from ..checkpoint import load_backbone_weights


class ScanBackbone(BaseModule):
    """Base of the backbones. Subclasses set the class attributes below and ``self.frozen_stages``
    and implement ``_frozen_modules(stage)`` (stage -1 = stem)."""

    in_channels = 3
    head_prefixes = ()  # classification-head keys dropped when loading an ImageNet checkpoint
    optional_prefixes = ()  # keys a classification checkpoint cannot have (new output norms)

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError(f"{type(self).__name__}: init_cfg type='Pretrained' needs 'checkpoint'")
            load_backbone_weights(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                  head_prefixes=self.head_prefixes,
                                  optional_prefixes=self.optional_prefixes)
            self._is_init = True
        else:
            super().init_weights()

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (B, {self.in_channels}, H, W) input, '
                             f'got {tuple(x.shape)}')

    def _frozen_modules(self, stage):
        raise NotImplementedError

    def _freeze_stages(self):
        for stage in range(-1, self.frozen_stages):
            for module in self._frozen_modules(stage):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self
