from .deformable_scan import DeformablePathSort, DeformableScan, unsort_tokens
from .depthwise_conv import DepthwiseConv2d
from .dynamic_adaptive_scan import DynamicAdaptiveScan, OffsetPredictionNet, adaptive_sample
from .layer_norm import LayerNorm, layer_norm_ref
from .scan_merge import merge_scans_gate, merge_scans_gate_ref
from .selective_scan import (SelectiveScan, kernel_available, selective_scan_fn,
                             selective_scan_ref)
from .state_fusion import SelectiveScanStates, StateFusion, selective_scan_states

__all__ = ['DeformablePathSort', 'DeformableScan', 'unsort_tokens', 'DepthwiseConv2d',
           'LayerNorm', 'layer_norm_ref', 'merge_scans_gate', 'merge_scans_gate_ref',
           'DynamicAdaptiveScan', 'OffsetPredictionNet', 'adaptive_sample',
           'SelectiveScan', 'kernel_available', 'selective_scan_fn', 'selective_scan_ref',
           'SelectiveScanStates', 'StateFusion', 'selective_scan_states']
