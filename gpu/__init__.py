"""CuPy RawKernel implementations of the book's tricks, with their thin launchers.

``import gpu`` works on any machine: CuPy is imported only when a kernel is launched,
and ``gpu.available()`` says whether a CUDA device can be used here.
"""

from gpu.runtime import available, device_info, device_summary, why_unavailable

__all__ = ["available", "device_info", "device_summary", "why_unavailable"]
