"""Export: models that really are smaller and faster (``shrink``), and their file formats."""
from qaprune.export.shrink import BlockDiagonalLinear, ShrinkResult, SparseLinear, shrink

__all__ = ["shrink", "ShrinkResult", "BlockDiagonalLinear", "SparseLinear"]
