"""Combine functions for ``tl.reduce`` / ``tl.associative_scan``.

Kernels call ``tl.reduce(x, axis, SUM)`` instead of ``tl.sum(x, axis)``: identical code on a GPU,
but under TRITON_INTERPRET=1 ``tl.sum`` is an interpreted library function (~2 ms a call) while
``tl.reduce`` with the standard library's own combine function takes the interpreter's numpy
fast path (~0.1 ms). That makes the CPU tests several times faster.
"""
import triton
import triton.language as tl

try:  # the standard library's combine functions (what tl.sum / tl.cumprod use internally)
    from triton.language.standard import _elementwise_max as MAX
    from triton.language.standard import _elementwise_min as MIN
    from triton.language.standard import _prod_combine as PROD
    from triton.language.standard import _sum_combine as SUM
except ImportError:  # private names moved: same results, only the interpreter gets slower
    @triton.jit
    def SUM(a, b):
        return a + b

    @triton.jit
    def PROD(a, b):
        return a * b

    @triton.jit
    def MAX(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def MIN(a, b):
        return tl.minimum(a, b)
