# cython: language_level=3
# Shared C helpers of the kernel modules (activations, norm, dropout, spatial, penalty, losses,
# optim, metrics): the per-ISA clone attribute, flush-to-zero, branch-free float32 math that gcc
# vectorizes, the counter-based hash of dropout and the static split of a range among threads.
# A .pxd, not a module: every kernel module that cimports it gets its own copy of these static
# inline functions, so there is no cross-module call.
from cython cimport floating

cdef extern from *:
    """
    #ifndef FN_VECMATH_H
    #define FN_VECMATH_H
    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(_MSC_VER) && !defined(restrict)   /* C99 restrict in MSVC's C */
    #define restrict __restrict
    #endif

    /* Loops compiled for AVX-512, AVX2 and baseline x86-64, the loader picks one per CPU (GCC
       target_clones, an ifunc); the build itself uses no -m flags.
       FASTNET_CFLAGS=-DFN_NO_TARGET_CLONES builds the baseline code only (to test it). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \\
        && defined(__GLIBC__) && __GNUC__ >= 11 && !defined(FN_NO_TARGET_CLONES)
    #define FN_VEC_CLONES \\
        __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define FN_VEC_CLONES
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    /* Without it gcc will not if-convert the selects below (a comparison could raise an FP
       exception flag) and leaves the loops scalar except with AVX-512 masks.  The kernels
       never read the exception flags. */
    #define FN_VEC_NOTRAP __attribute__((optimize("no-trapping-math")))
    #else
    #define FN_VEC_NOTRAP
    #endif
    /* The math helpers must be inlined into the loops for them to vectorize; gcc's inliner
       gives up in a function with many such loops unless told. */
    #if defined(__GNUC__)
    #define FN_VEC_INLINE static inline __attribute__((always_inline))
    #else
    #define FN_VEC_INLINE static inline
    #endif

    /* Flush-to-zero + denormals-are-zero while a kernel runs, restored after (as the GEMM's
       workers do): denormal operands are slow and carry no information for training. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned fn_ftz_begin(void)
    {
        unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040u);
        return csr;
    }
    static inline void fn_ftz_end(unsigned csr) { _mm_setcsr(csr); }
    #else
    static inline unsigned fn_ftz_begin(void) { return 0; }
    static inline void fn_ftz_end(unsigned csr) { (void)csr; }
    #endif

    /* exp, tanh, expm1, log1p and erfc for float32 without branches or calls, so that gcc
       vectorizes the loops around them (libm's expf/tanhf are scalar calls without
       -ffast-math).  exp/tanh: Cephes's polynomials, relative error below 2e-7 (about 2 ulp)
       over the whole range; +-inf, NaN, overflow to inf and underflow through the subnormals
       to 0 behave like libm's. */
    FN_VEC_NOTRAP FN_VEC_INLINE float fn_pow2i(int32_t k)      /* 2**k for -126 <= k <= 127 */
    {
        uint32_t bits = (uint32_t)(k + 127) << 23;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }

    FN_VEC_NOTRAP FN_VEC_INLINE float fn_expf(float x)
    {
        const float round_magic = 12582912.0f;          /* 1.5 * 2**23: round to nearest */
        float xc, n, r, p;
        int32_t k, k1;
        xc = x < -105.0f ? -105.0f : x;                  /* exp(-105) rounds to 0 */
        xc = xc > 89.0f ? 89.0f : xc;                    /* exp(89) overflows to inf */
        xc = xc == xc ? xc : 0.0f;                       /* NaN: keep the int cast defined */
        n = (xc * 1.44269504088896341f + round_magic) - round_magic;
        r = xc - n * 0.693359375f;                       /* ln 2 in two pieces (Cody-Waite) */
        r = r - n * -2.12194440e-4f;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        k = (int32_t)n;                                  /* -152..129 */
        k1 = k / 2;                                      /* 2**k as two factors in range */
        p = p * fn_pow2i(k1) * fn_pow2i(k - k1);
        return x == x ? p : x;
    }

    FN_VEC_NOTRAP FN_VEC_INLINE float fn_tanhf(float x)
    {
        float ax = fabsf(x), z = x * x, small, large, e;
        small = -5.70498872745e-3f;                      /* |x| < 0.625: odd polynomial */
        small = small * z + 2.06390887954e-2f;
        small = small * z - 5.37397155531e-2f;
        small = small * z + 1.33314422036e-1f;
        small = small * z - 3.33332819422e-1f;
        small = small * z * x + x;
        e = fn_expf(2.0f * ax);                          /* else 1 - 2 / (exp(2|x|) + 1) */
        large = 1.0f - 2.0f / (e + 1.0f);
        return copysignf(ax < 0.625f ? small : large, x);   /* odd; keeps tanh(-0) = -0 */
    }

    /* exp(x) - 1 for x <= 0 (ELU's negative side), accurate near 0 where exp(x) - 1 cancels:
       2t / (1 - t) with t = tanh(x / 2), where 1 - t lies in [1, 2).  Arguments above 0 are
       clamped to 0. */
    FN_VEC_NOTRAP FN_VEC_INLINE float fn_expm1f_neg(float x)
    {
        float t = fn_tanhf(0.5f * (x > 0.0f ? 0.0f : x));
        return 2.0f * t / (1.0f - t);
    }

    /* log(1 + z) for 0 <= z <= 1 (softplus): 2 atanh(s) with s = z / (2 + z) <= 1/3, the
       series in s**2 to s**16 (truncation below 2e-9 relative). */
    FN_VEC_NOTRAP FN_VEC_INLINE float fn_log1pf_unit(float z)
    {
        float s = z / (2.0f + z), s2 = s * s, p;
        p = 1.0f / 15.0f;
        p = p * s2 + 1.0f / 13.0f;
        p = p * s2 + 1.0f / 11.0f;
        p = p * s2 + 1.0f / 9.0f;
        p = p * s2 + 1.0f / 7.0f;
        p = p * s2 + 1.0f / 5.0f;
        p = p * s2 + 1.0f / 3.0f;
        return 2.0f * s + 2.0f * s * s2 * p;
    }

    /* erfc(x) for float32: for z = |x|, t = 1 / (1 + z/2),
       erfc(z) = t exp(-z**2 + P(t)) with the Chebyshev-fitted degree-9 P of Numerical Recipes
       (erfcc, fractional error below 1.2e-7 for every z >= 0); erfc(-z) = 2 - erfc(z).  In
       float32 the rounding of z**2 adds a relative error of about z**2 * 6e-8 in the far tail
       (3e-6 at z = 7, where erfc is 4e-23). */
    FN_VEC_NOTRAP FN_VEC_INLINE float fn_erfcf(float x)
    {
        float z = fabsf(x), t = 1.0f / (1.0f + 0.5f * z), p, r;
        p = 0.17087277f;
        p = p * t - 0.82215223f;
        p = p * t + 1.48851587f;
        p = p * t - 1.13520398f;
        p = p * t + 0.27886807f;
        p = p * t - 0.18628806f;
        p = p * t + 0.09678418f;
        p = p * t + 0.37409196f;
        p = p * t + 1.00002368f;
        p = p * t - 1.26551223f;
        r = t * fn_expf(p - z * z);
        return x >= 0.0f ? r : 2.0f - r;
    }

    /* Counter-based random bits (dropout): splitmix64 makes a per-call key from (seed, step);
       fn_mix32 is a 32-bit avalanche permutation (xor-shift-multiply with Wellons's
       "lowbias32" constants), keyed and applied twice to an element index by the caller. */
    static inline uint64_t fn_splitmix64(uint64_t x)
    {
        x += 0x9E3779B97F4A7C15ull;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        return x ^ (x >> 31);
    }

    FN_VEC_INLINE uint32_t fn_mix32(uint32_t x)
    {
        x ^= x >> 16;
        x *= 0x7FEB352Du;
        x ^= x >> 15;
        x *= 0x846CA68Bu;
        x ^= x >> 16;
        return x;
    }
    #endif  /* FN_VECMATH_H */
    """
    unsigned fn_ftz_begin() noexcept nogil
    void fn_ftz_end(unsigned csr) noexcept nogil
    unsigned long long fn_splitmix64(unsigned long long x) noexcept nogil


cdef inline Py_ssize_t split_bound(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nparts,
                                   Py_ssize_t align) noexcept nogil:
    """Start of piece t of n items split in nparts contiguous pieces, aligned to ``align``
    (t = nparts gives n)."""
    if t >= nparts:
        return n
    return (n * t // nparts) // align * align
