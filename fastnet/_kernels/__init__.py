"""Compiled kernels (Cython + C).  Trusted inputs only: call them through ``fastnet.ops``."""
