from .defmamba import DefMamba

__all__ = ['DefMamba', 'SpatialMamba', 'DAMamba']
from .spatialmamba import SpatialMamba
from .damamba import DAMamba
