from .defmamba import DefMamba

__all__ = ['DefMamba']
