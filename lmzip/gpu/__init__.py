"""lmzip on NVIDIA GPUs: the portable engine's numerics ("portable 1") in Triton kernels.

A GPU computes the C engine's logits bit for bit, so a file compressed on a GPU is
byte-identical to the CPU's and decodes on any CPU (docs/gpu.md).  Optional: the ``gpu``
extra (torch and triton); nothing here imports them until a GPU model is made.
"""
