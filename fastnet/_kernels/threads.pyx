# cython: language_level=3
"""OpenMP facts for fastnet.config: whether the build has OpenMP and its default team size."""
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fn_openmp_enabled(void) { return 1; }
    static int fn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fn_openmp_enabled(void) { return 0; }
    static int fn_omp_max_threads(void) { return 1; }
    #endif
    """
    int fn_openmp_enabled()
    int fn_omp_max_threads()


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(fn_openmp_enabled())


def omp_max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS)."""
    return fn_omp_max_threads()


# --- robustness probe (tests/test_robustness.py) ---
from cython.parallel cimport prange, threadid
from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end

cdef extern from *:
    """
    #if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static unsigned fn_read_csr(void) { return _mm_getcsr(); }
    #else
    static unsigned fn_read_csr(void) { return 0; }
    #endif
    """
    unsigned fn_read_csr() noexcept nogil


def worker_mxcsr(int nthreads):
    """The MXCSR each OpenMP worker sees inside a kernel piece bracketed like the kernels'
    (fn_ftz_begin/fn_ftz_end), then the caller's MXCSR after the parallel region:
    (list of nthreads ints, int).  0 entries on non-x86 builds."""
    if nthreads < 1:
        raise ValueError(f"worker_mxcsr: nthreads must be >= 1, got {nthreads}")
    cdef unsigned[::1] seen = memoryview(bytearray(4 * nthreads)).cast("I")
    cdef Py_ssize_t t
    cdef unsigned csr
    with nogil:
        for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
            csr = fn_ftz_begin()
            seen[t] = fn_read_csr()
            fn_ftz_end(csr)
    return [int(v) for v in seen], int(fn_read_csr())
