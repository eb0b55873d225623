from setuptools import find_packages, setup

setup(
    name='mmdefscan',
    version='0.1.0',
    description='Vision Mamba backbones with deformable / adaptive scanning for OpenMMLab',
    packages=find_packages(include=['mmdefscan', 'mmdefscan.*']),
    python_requires='>=3.9',
    # torch and the OpenMMLab stack are installed by tools/setup_env.sh (mmcv needs a build);
    # torch 2.4 for the device-typed autocast queries of the CUDA paths
    install_requires=['torch>=2.4', 'mmengine>=0.10.0,<1.0'],
    extras_require={
        'mm': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0.0', 'mmsegmentation>=1.0.0', 'mmpretrain>=1.0.0'],
        'cuda': ['mamba-ssm>=2.0', 'triton>=3.0'],
        'onnx': ['onnx', 'onnxscript', 'onnxruntime'],
        'tests': ['pytest', 'onnx', 'onnxscript', 'onnxruntime'],
    },
)
