"""mmpretrain 1.2 beside transformers 5: keep mmpretrain's classification models importable.

mmpretrain 1.2 imports its multimodal models (BLIP, Flamingo, ...) whenever transformers >= 4.28
is installed. They subclass names that transformers 5 dropped from ``transformers.modeling_utils``
(mmpretrain's fallback makes the base class None), so ``mmpretrain.models``, and with it every
mmpretrain config, fails to import; MMEngine reports that as "UniversalVisualizer is not in the
mmengine::visualizer registry". With transformers 5 or newer, mmpretrain's own switch for those
models is turned off before its models are imported: they become mmpretrain's placeholders,
which say what they need when built.
"""
import importlib.metadata
import importlib.util
import sys


def transformers_major():
    """The installed transformers' major version, or None."""
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def disable_multimodal_if_incompatible():
    """Turn mmpretrain's multimodal models off when transformers >= 5 is installed and
    ``mmpretrain.models`` is not imported yet; whether it did."""
    major = transformers_major()
    if (major is None or major < 5 or 'mmpretrain.models' in sys.modules
            or importlib.util.find_spec('mmpretrain') is None):
        return False
    try:
        from mmpretrain.utils import dependency
    except Exception:  # noqa: BLE001  (a broken mmpretrain fails later, where it is used)
        return False
    dependency.WITH_MULTIMODAL = False
    return True
