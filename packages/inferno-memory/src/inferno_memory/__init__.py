"""Embeddable memory pools for CUDA (CuPy) and host memory, with RMM-class adaptors."""

__all__: list[str] = []
