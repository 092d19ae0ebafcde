/* AVX-512 microkernel body for one precision (included by kernel.c with T, VEC, MASK, VL, MR,
 * SUF, EPI and the intrinsic macros defined).  Tile: MR rows x 2 vectors (NR = 2 VL) of
 * accumulators (16 zmm for MR = 8); per depth step 2 vector loads of B and MR values of A,
 * each feeding 2 FMAs.  Partial columns use masked loads/stores, so edge tiles run the same
 * code; partial rows are simply not stored (the packed A is zero-padded).
 *
 * How an A value reaches its 2 FMAs is the one CPU-dependent choice (fn_avx512_bcast_mem,
 * set at dispatch): broadcast once into a register (a load-port op on Intel, whose 2 load
 * ports could not feed 18 loads per 8 cycles of FMAs), or read by each FMA as an embedded
 * {1toN} memory broadcast (AMD Zen 4, where the separate broadcast also takes an FP pipe
 * slot from the FMAs: 2.5-5% faster here).  Both do the same FMAs in the same order, so the
 * results are bitwise identical. */
#define KCAT_(a, b) a##b
#define KCAT(a, b) KCAT_(a, b)
#define K(name) KCAT(name##_, SUF)

FN_INLINE void K(body)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                       ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e,
                       const int rows, const int nv, const int mem)
{
    const MASK k0 = (MASK)(n >= VL ? FULLMASK : ((1u << n) - 1u));
    const MASK k1 = (MASK)(n >= 2 * VL ? FULLMASK : n > VL ? ((1u << (n - VL)) - 1u) : 0u);
    VEC acc0[MR], acc1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) {
        acc0[i] = VZERO();
        acc1[i] = VZERO();
    }
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
        if (i < m) {  /* every line of the row's n values (up to 3: C need not be aligned) */
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
            if (nv > 1) _mm_prefetch((const char *)(c + i * ldc + VL), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + i * ldc + n - 1), _MM_HINT_T0);
        }
    for (ptrdiff_t p = 0; p < k; ++p) {
        const VEC b0 = VLOADM(k0, b), b1 = nv > 1 ? VLOADM(k1, b + VL) : VZERO();
#pragma GCC unroll 16
        for (int i = 0; i < rows; ++i) {
            if (mem) {
                VFMA_BCAST(acc0[i], b0, a + i * rsa);
                if (nv > 1) VFMA_BCAST(acc1[i], b1, a + i * rsa);
            } else {
                const VEC av = VSET1(a[i * rsa]);
                acc0[i] = VFMA(av, b0, acc0[i]);
                if (nv > 1) acc1[i] = VFMA(av, b1, acc1[i]);
            }
        }
        a += csa;
        b += rsb;
    }
    const VEC va = VSET1(e->alpha), vb = VSET1(e->beta);
    const int has_beta = e->beta != (T)0, relu = e->relu;
    const T *bias = e->bias;
    const VEC bias0 = bias ? VLOADM(k0, bias) : VZERO();
    const VEC bias1 = bias && nv > 1 ? VLOADM(k1, bias + VL) : VZERO();
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) {
        if (i < m) {
            T *ci = c + i * ldc;
            VEC r0 = VMUL(va, acc0[i]), r1 = VMUL(va, acc1[i]);
            if (has_beta) {
                r0 = VFMA(vb, VLOADM(k0, ci), r0);
                if (nv > 1) r1 = VFMA(vb, VLOADM(k1, ci + VL), r1);
            }
            if (bias) {
                r0 = VADD(r0, bias0);
                r1 = VADD(r1, bias1);
            }
            if (relu) {
                r0 = VMAX(r0, VZERO());
                r1 = VMAX(r1, VZERO());
            }
            VSTOREM(ci, k0, r0);
            if (nv > 1) VSTOREM(ci + VL, k1, r1);
        }
    }
}

/* n <= VL: one vector column, half the FMAs (skinny products such as N = 10).  The packed
 * kernel also has a half-height instance for edge tiles with m <= MR / 2 (M = 9: 8 + 1 rows). */
#define K_DISPATCH_(RSA, CSA, ROWS, MEM)                                                         \
    if (n > VL) K(body)(k, a, RSA, CSA, b, rsb, c, ldc, m, n, e, ROWS, 2, MEM);                  \
    else K(body)(k, a, RSA, CSA, b, rsb, c, ldc, m, n, e, ROWS, 1, MEM);
#define K_DISPATCH(RSA, CSA, ROWS)                                                               \
    if (__atomic_load_n(&fn_avx512_bcast_mem, __ATOMIC_RELAXED)) {                               \
        K_DISPATCH_(RSA, CSA, ROWS, 1)                                                           \
    } else {                                                                                     \
        K_DISPATCH_(RSA, CSA, ROWS, 0)                                                           \
    }

static void K(packed)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                      ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)rsa; (void)csa;
    if (m > MR / 2) {
        K_DISPATCH(1, MR, MR)
    } else {
        K_DISPATCH(1, MR, MR / 2)
    }
}

static void K(rows)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                    ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)csa;
    K_DISPATCH(rsa, 1, MR)
}

static void K(cols)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                    ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)rsa;
    K_DISPATCH(1, csa, MR)
}
#undef K_DISPATCH
#undef K_DISPATCH_

#undef K
#undef KCAT
#undef KCAT_
