/* fastnet GEMM entry points (fn_sgemm, fn_dgemm) and the per-thread scratch they pack into.
 * The loops live in gemm_frame_impl.h, instantiated here once per precision; the
 * microkernels and block sizes come from the dispatch table (dispatch.c). */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "gemm_internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Flush-to-zero + denormals-are-zero for the duration of a worker, restored after (x86). */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define FN_FTZ_BEGIN                                                                             \
    const unsigned fn_saved_csr = _mm_getcsr();                                                  \
    _mm_setcsr(fn_saved_csr | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
#define FN_FTZ_END _mm_setcsr(fn_saved_csr);
#else
#define FN_FTZ_BEGIN
#define FN_FTZ_END
#endif

/* ---- per-thread grow-only scratch ------------------------------------------------------ */
#define FN_SCRATCH_SLOTS 4
typedef struct {
    void *p[FN_SCRATCH_SLOTS];
    size_t n[FN_SCRATCH_SLOTS];
} fn_scratch_set;

static void *aligned_alloc64(size_t bytes)
{
#ifdef _WIN32
    return _aligned_malloc(bytes, 64);
#else
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
#endif
}

static void aligned_free64(void *p)
{
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

#ifdef _WIN32
static __declspec(thread) fn_scratch_set *tls_scratch;  /* freed at process exit only */
static void register_scratch(fn_scratch_set *s) { (void)s; }
#else
#include <pthread.h>
static _Thread_local fn_scratch_set *tls_scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void free_scratch(void *v)  /* runs when a thread that used the GEMM exits */
{
    fn_scratch_set *s = (fn_scratch_set *)v;
    for (int i = 0; i < FN_SCRATCH_SLOTS; ++i) aligned_free64(s->p[i]);
    free(s);
}

static void make_scratch_key(void) { pthread_key_create(&scratch_key, free_scratch); }

static void register_scratch(fn_scratch_set *s)
{
    pthread_once(&scratch_once, make_scratch_key);
    pthread_setspecific(scratch_key, s);
}
#endif

void *fn_scratch(int slot, size_t bytes)
{
    fn_scratch_set *s = tls_scratch;
    if (s == NULL) {
        s = (fn_scratch_set *)calloc(1, sizeof *s);
        if (s == NULL) return NULL;
        register_scratch(s);
        tls_scratch = s;
    }
    if (bytes == 0) bytes = 64;
    if (s->n[slot] < bytes) {
        size_t want = (bytes + bytes / 4 + 4095) & ~(size_t)4095;  /* grow with headroom */
        aligned_free64(s->p[slot]);
        s->p[slot] = aligned_alloc64(want);
        s->n[slot] = s->p[slot] ? want : 0;
    }
    return s->p[slot];
}

/* ---- the two precisions ------------------------------------------------------------------ */
#define T float
#define SUF s
#define EPI fn_epi_s
#define BLK fn_blocking_s
#define UKR fn_ukr_s
#define FIELD s
#define PUBLIC fn_sgemm
#include "gemm_frame_impl.h"
#undef T
#undef SUF
#undef EPI
#undef BLK
#undef UKR
#undef FIELD
#undef PUBLIC

#define T double
#define SUF d
#define EPI fn_epi_d
#define BLK fn_blocking_d
#define UKR fn_ukr_d
#define FIELD d
#define PUBLIC fn_dgemm
#include "gemm_frame_impl.h"

/* ---- the FMA peak probe ------------------------------------------------------------------ */

static double wall_seconds(void)
{
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

double fn_gemm_fma_peak(int nthreads, double seconds)
{
    double (*loop)(long long) = fn_gemm_current()->fma_loop;
    double total = 0.0;
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
#endif
    {
        /* ~0.1 ms a call, so a thread stops within 1% of `seconds` of its start */
        const long long chunk = 1 << 13;
        const double t0 = wall_seconds();
        double flops = 0.0, t;
        do {
            flops += loop(chunk);
            t = wall_seconds() - t0;
        } while (t < seconds);
        total += flops / t * 1e-9;
    }
    return total;
}
