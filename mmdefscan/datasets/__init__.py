"""Datasets shipped with mmdefscan (see ``synthetic`` for the demo data)."""
