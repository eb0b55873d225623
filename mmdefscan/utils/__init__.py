from .torchvision_stub import install_if_missing as install_torchvision_stub_if_missing

__all__ = ['install_torchvision_stub_if_missing']
