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
