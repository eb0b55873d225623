from .checkpoints import check_checkpoint, check_run_checkpoints
from .cli import (UserError, before_the_run, check_data_paths, enable_outputs, enable_tta,
                  load_config, prefer_expandable_segments, run_cli)
from .safe_load import allow_mmengine_checkpoints

__all__ = ['UserError', 'before_the_run', 'check_checkpoint', 'check_data_paths',
           'check_run_checkpoints', 'enable_outputs', 'enable_tta', 'load_config',
           'prefer_expandable_segments', 'run_cli', 'allow_mmengine_checkpoints']
