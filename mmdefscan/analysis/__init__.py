"""Research tools: where the scans of a backbone read and what they attend to."""
from .scan_attention import (ScanAttention, effective_receptive_field, record_scan_attention,
                             ssm_rows)

__all__ = ['ScanAttention', 'effective_receptive_field', 'record_scan_attention', 'ssm_rows']
