"""Triton kernels of the fused ops, one op per file (``kernels/<op>.py``), added by the kernel work."""
