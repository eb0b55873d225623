from .cli import (check_data_paths, enable_outputs, enable_tta, load_config,
                  prefer_expandable_segments, run_cli)
from .safe_load import allow_mmengine_checkpoints

__all__ = ['check_data_paths', 'enable_outputs', 'enable_tta', 'load_config',
           'prefer_expandable_segments', 'run_cli', 'allow_mmengine_checkpoints']
