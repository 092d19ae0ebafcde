/* AVX2 + FMA microkernel body for one precision (included by kernel.c).  Tile: MR = 6 rows x 2
 * ymm (NR = 2 VL) = 12 accumulators + 2 B vectors + 1 broadcast.  Partial columns use
 * vmaskmov loads/stores (a separate instantiation, so full tiles keep plain loads/stores);
 * partial rows are not stored (the packed A is zero-padded). */
#define KCAT_(a, b) a##b
#define KCAT(a, b) KCAT_(a, b)
#define K(name) KCAT(name##_, SUF)

FN_INLINE void K(body)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                       ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e,
                       const int full, const int nv)
{
    const VMASKT k0 = VMASK(n), k1 = VMASK(n - VL);
    VEC acc0[MR], acc1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        acc0[i] = VZERO();
        acc1[i] = VZERO();
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
        if (i < m) {  /* every line of the row's n values (C need not be aligned) */
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
            if (nv > 1) _mm_prefetch((const char *)(c + i * ldc + VL), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + i * ldc + n - 1), _MM_HINT_T0);
        }
    for (ptrdiff_t p = 0; p < k; ++p) {
        const VEC b0 = full ? VLOADU(b) : VMASKLOAD(b, k0);
        const VEC b1 = nv < 2 ? VZERO() : full ? VLOADU(b + VL) : VMASKLOAD(b + VL, k1);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const VEC av = VSET1(a[i * rsa]);
            acc0[i] = VFMA(av, b0, acc0[i]);
            if (nv > 1) acc1[i] = VFMA(av, b1, acc1[i]);
        }
        a += csa;
        b += rsb;
    }
    const VEC va = VSET1(e->alpha), vb = VSET1(e->beta);
    const int has_beta = e->beta != (T)0, relu = e->relu;
    const T *bias = e->bias;
    VEC bias0 = VZERO(), bias1 = VZERO();
    if (bias) {
        bias0 = full ? VLOADU(bias) : VMASKLOAD(bias, k0);
        if (nv > 1) bias1 = full ? VLOADU(bias + VL) : VMASKLOAD(bias + VL, k1);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        if (i < m) {
            T *ci = c + i * ldc;
            VEC r0 = VMUL(va, acc0[i]), r1 = VMUL(va, acc1[i]);
            if (has_beta) {
                r0 = VFMA(vb, full ? VLOADU(ci) : VMASKLOAD(ci, k0), r0);
                if (nv > 1) r1 = VFMA(vb, full ? VLOADU(ci + VL) : VMASKLOAD(ci + VL, k1), r1);
            }
            if (bias) {
                r0 = VADD(r0, bias0);
                r1 = VADD(r1, bias1);
            }
            if (relu) {
                r0 = VMAX(r0, VZERO());
                r1 = VMAX(r1, VZERO());
            }
            if (full) {
                VSTOREU(ci, r0);
                VSTOREU(ci + VL, r1);
            } else {
                VMASKSTORE(ci, k0, r0);
                if (nv > 1) VMASKSTORE(ci + VL, k1, r1);
            }
        }
    }
}

/* Full tiles: plain loads/stores; n <= VL: one vector column (half the FMAs); else masked. */
#define K_DISPATCH(RSA, CSA)                                                                     \
    if (n == 2 * VL) K(body)(k, a, RSA, CSA, b, rsb, c, ldc, m, n, e, 1, 2);                     \
    else if (n <= VL) K(body)(k, a, RSA, CSA, b, rsb, c, ldc, m, n, e, 0, 1);                    \
    else K(body)(k, a, RSA, CSA, b, rsb, c, ldc, m, n, e, 0, 2);

static void K(packed)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                      ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)rsa; (void)csa;
    K_DISPATCH(1, MR)
}

static void K(rows)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                    ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)csa;
    K_DISPATCH(rsa, 1)
}

static void K(cols)(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,
                    ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)
{
    (void)rsa;
    K_DISPATCH(1, csa)
}
#undef K_DISPATCH

#undef K
#undef KCAT
#undef KCAT_

