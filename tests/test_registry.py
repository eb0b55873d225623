"""The mmdefscan scope works from mmdet, mmseg and mmpretrain configs and registries."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import init_default_scope

TINY = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])

# Stock configs + custom_imports, run in a fresh interpreter so nothing was imported beforehand.
STOCK_CONFIG_SCRIPT = textwrap.dedent('''
    import sys, tempfile, os, torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    det = """
    _base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
    custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)
    model = dict(backbone=dict(_delete_=True, type='mmdefscan.DefMamba', dims=[16, 32, 48, 64],
                               depths=[1, 1, 1, 1]),
                 neck=dict(in_channels=[16, 32, 48, 64]))
    """
    seg = """
    _base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
    custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)
    norm_cfg = dict(type='BN', requires_grad=True)
    model = dict(backbone=dict(_delete_=True, type='mmdefscan.DefMamba', dims=[16, 32, 48, 64],
                               depths=[1, 1, 1, 1]),
                 decode_head=dict(in_channels=[16, 32, 48, 64], norm_cfg=norm_cfg),
                 auxiliary_head=dict(in_channels=48, norm_cfg=norm_cfg))
    """
    assert 'mmdefscan' not in sys.modules
    d = tempfile.mkdtemp()
    for name, text in (('det', det), ('seg', seg)):
        path = os.path.join(d, name + '.py')
        open(path, 'w').write(text)
        cfg = Config.fromfile(path)   # custom_imports imports mmdefscan here
        assert 'mmdefscan' in sys.modules
        init_default_scope(cfg.default_scope)
        if name == 'det':
            from mmdet.registry import MODELS
        else:
            from mmseg.registry import MODELS
        model = MODELS.build(cfg.model).eval()
        assert type(model.backbone).__name__ == 'DefMamba'
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 64, 96))
        print(name, type(model).__name__, [tuple(f.shape) for f in feats])
''')


def test_stock_mmdet_and_mmseg_configs_build_with_custom_imports():
    result = subprocess.run([sys.executable, '-c', STOCK_CONFIG_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(('det ', 'seg '))]
    # Mask R-CNN: FPN gives 5 levels of 256 channels; UperNet: the 4 backbone maps
    assert lines[0].startswith('det MaskRCNN [(1, 256, 16, 24), (1, 256, 8, 12)')
    assert lines[1] == 'seg EncoderDecoder [(1, 16, 16, 24), (1, 32, 8, 12), (1, 48, 4, 6), (1, 64, 2, 3)]'


def test_scoped_type_resolves_lazily_without_import():
    """type='mmdefscan.X' from another package's registry imports mmdefscan on demand."""
    script = ('import sys; from mmdet.registry import MODELS; '
              'from mmengine.registry import init_default_scope; init_default_scope("mmdet"); '
              f'm = MODELS.build(dict(type="mmdefscan.DefMamba", **{TINY!r})); '
              'print(type(m).__module__)')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('mmdefscan.models.backbones.defmamba')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_bare_type_builds_under_default_scope(scope):
    import mmdefscan  # noqa: F401
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    init_default_scope(scope)
    model = registry.build(dict(type='DefMamba', **TINY))
    assert type(model).__name__ == 'DefMamba'
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [16, 32, 48, 64]


def test_unknown_type_is_mmengines_key_error():
    import mmdefscan  # noqa: F401
    from mmdet.registry import MODELS
    from mmdefscan.registry import MODELS as OURS
    init_default_scope('mmdet')
    with pytest.raises(KeyError, match='DefMambaa is not in the mmdet::model registry'):
        MODELS.build(dict(type='DefMambaa'))
    init_default_scope('mmdefscan')
    with pytest.raises(KeyError, match='NoSuchNet is not in the mmdefscan::model registry'):
        OURS.build(dict(type='NoSuchNet'))
    init_default_scope('mmdet')
    with pytest.raises(KeyError, match='NoSuchNet is not in the mmdet::model registry'):
        MODELS.build(dict(type='mmdefscan.NoSuchNet'))


def test_scan_operators_are_registered_modules():
    from mmdefscan.registry import MODELS
    init_default_scope('mmdefscan')
    scan = MODELS.build(dict(type='SelectiveScan'))
    deform = MODELS.build(dict(type='DeformableScan', dim=8, stage=1))
    x = torch.randn(1, 8, 5, 6)
    tokens, order = deform(x)
    assert tokens.shape == (1, 8, 30) and sorted(order[0].tolist()) == list(range(30))
    u = torch.randn(1, 8, 30)
    y = scan(u, u, -torch.ones(8, 4), torch.randn(1, 4, 30), torch.randn(1, 4, 30))
    assert y.shape == u.shape


def test_bare_names_go_to_the_root_registry_only_where_free():
    """import mmdefscan registers DefMamba, SpatialMamba and DAMamba by their bare names at
    MMEngine's root registry; a name another package registered first (at the root, or in a
    scope) stays that package's, with a warning naming it, and the scoped name builds ours."""
    script = textwrap.dedent('''
        import warnings
        import torch.nn as nn
        from mmengine.registry import MODELS
        from mmdet.registry import MODELS as MMDET_MODELS

        class DefMamba(nn.Module):  # another package's classes of the same names
            pass

        class SpatialMamba(nn.Module):
            pass
        DefMamba.__module__ = SpatialMamba.__module__ = 'otherpkg.models'
        MODELS.register_module(module=DefMamba)
        MMDET_MODELS.register_module(module=SpatialMamba)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import mmdefscan
        for w in caught:
            if str(w.message).startswith('mmdefscan:'):
                print('warning:', w.message)
        for name in ('DefMamba', 'SpatialMamba', 'DAMamba'):
            print(name, getattr(MODELS.module_dict.get(name), '__module__', None))
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-3:] == ['DefMamba otherpkg.models', 'SpatialMamba None',
                          'DAMamba mmdefscan.models.backbones.damamba']
    warned = [line for line in lines if line.startswith('warning:')]
    assert warned == [
        "warning: mmdefscan: type='DefMamba' stays otherpkg.models.DefMamba (registered in the "
        "mmengine scope by another package); use type='mmdefscan.DefMamba' for mmdefscan's",
        "warning: mmdefscan: type='SpatialMamba' stays otherpkg.models.SpatialMamba (registered "
        "in the mmdet scope by another package); use type='mmdefscan.SpatialMamba' for "
        "mmdefscan's"]
