from .deformable_scan import DeformablePathSort, DeformableScan, unsort_tokens
from .selective_scan import (SelectiveScan, kernel_available, selective_scan_fn,
                             selective_scan_ref)

__all__ = ['DeformablePathSort', 'DeformableScan', 'unsort_tokens',
           'SelectiveScan', 'kernel_available', 'selective_scan_fn', 'selective_scan_ref',
           'SelectiveScanStates', 'StateFusion', 'selective_scan_states',
           'DynamicAdaptiveScan', 'OffsetPredictionNet', 'adaptive_sample', 'state_scan']
from .state_fusion import SelectiveScanStates, StateFusion, selective_scan_states
from .dynamic_adaptive_scan import DynamicAdaptiveScan, OffsetPredictionNet, adaptive_sample, state_scan
