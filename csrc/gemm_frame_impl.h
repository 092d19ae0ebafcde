/* The GEMM frame for one precision; included by gemm_frame.c with
 *   T (float/double), SUF (s/d), EPI, BLK, UKR, FIELD (table member s/d), PUBLIC (fn_sgemm...).
 *
 * Loops (Goto/BLIS, transposed so the vector side is N, the contiguous side of row-major C):
 *   ic over M by MC        pack A block (MC x KC) unless A is read in place
 *     pc over K by KC      (KC balanced: ceil(K / ceil(K / KC)))
 *       jc over N by NC    pack B block (KC x NC, stays in L2) unless B is read in place
 *         ir over MR       the A micro-panel (MR x KC) stays in L1 ...
 *           jr over NR     ... while B micro-panels stream from L2: one microkernel call
 * The first depth block applies beta, the last one bias + activation, all inside the kernel.
 *
 * Threads own disjoint tiles of C (a 2-D grid over MR x NR tiles chosen from the shape) and
 * pack their own panels into per-thread grow-only buffers: no barrier, no shared scratch.
 * When C has too few tiles to share and K is long, the depth is cut into a FIXED number of
 * chunks (a function of the shape only); each chunk's partial product goes to its own buffer
 * and the chunks are summed in chunk order.  Every choice that changes rounding (path, KC,
 * chunks) depends on the shape and the ISA only, never on the thread count or timing, so the
 * results are bitwise identical across runs and thread counts.
 */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define F(name) CAT(name##_, SUF)

/* C = act(beta C + bias) when there is no product (K == 0 or alpha == 0). */
static void F(scale_only)(ptrdiff_t M, ptrdiff_t N, T beta, T *C, ptrdiff_t ldc, const T *bias,
                          int relu)
{
    for (ptrdiff_t i = 0; i < M; ++i) {
        T *c = C + i * ldc;
        for (ptrdiff_t j = 0; j < N; ++j) {
            T r = beta == (T)0 ? (T)0 : beta * c[j];
            if (bias) r += bias[j];
            if (relu) r = r > (T)0 ? r : (T)0;
            c[j] = r;
        }
    }
}

/* Last resort when scratch memory cannot be had: correct, unblocked, allocation-free. */
static void F(naive)(int transa, int transb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, T alpha,
                     const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T beta, T *C,
                     ptrdiff_t ldc, const T *bias, int relu)
{
    for (ptrdiff_t i = 0; i < M; ++i)
        for (ptrdiff_t j = 0; j < N; ++j) {
            T s = 0;
            for (ptrdiff_t p = 0; p < K; ++p)
                s += (transa ? A[p * lda + i] : A[i * lda + p]) *
                     (transb ? B[j * ldb + p] : B[p * ldb + j]);
            T r = alpha * s;
            if (beta != (T)0) r += beta * C[i * ldc + j];
            if (bias) r += bias[j];
            if (relu) r = r > (T)0 ? r : (T)0;
            C[i * ldc + j] = r;
        }
}

/* Depth block size: at most bk->kc, balanced so the last block is not a sliver. */
static ptrdiff_t F(balanced_kc)(ptrdiff_t K, int kc)
{
    ptrdiff_t nblk = (K + kc - 1) / kc;
    ptrdiff_t b = (K + nblk - 1) / nblk;
    return b < 1 ? 1 : b;
}

typedef struct {
    int pack_a;  /* 0: A read in place by the rows (!transa) or cols (transa) kernel */
    int pack_b;  /* 0: B read in place (!transb only) */
} F(plan);

/* One thread's serial Goto loops over the sub-problem C[0:M, 0:N] (pointers pre-offset). */
static void F(serial)(const BLK *bk, const F(plan) *pl, int transa, int transb, ptrdiff_t M,
                      ptrdiff_t N, ptrdiff_t K, T alpha, const T *A, ptrdiff_t lda, const T *B,
                      ptrdiff_t ldb, T beta, T *C, ptrdiff_t ldc, const T *bias, int relu)
{
    const int mr = bk->mr, nr = bk->nr;
    const ptrdiff_t kc = F(balanced_kc)(K, bk->kc);
    const ptrdiff_t MC = pl->pack_a ? ((bk->mc + mr - 1) / mr) * mr : M;
    const ptrdiff_t NC = pl->pack_b ? ((bk->nc + nr - 1) / nr) * nr : N;
    const ptrdiff_t mcap = M < MC ? M : MC, ncap = N < NC ? N : NC;
    T *bufA = NULL, *bufB = NULL, *edge = NULL;
    if (pl->pack_a)
        bufA = (T *)fn_scratch(0, sizeof(T) * (size_t)((mcap + mr - 1) / mr * mr) * (size_t)kc);
    else
        edge = (T *)fn_scratch(2, sizeof(T) * (size_t)mr * (size_t)kc);
    if (pl->pack_b)
        bufB = (T *)fn_scratch(1, sizeof(T) * (size_t)((ncap + nr - 1) / nr * nr) * (size_t)kc);
    if ((pl->pack_a && !bufA) || (!pl->pack_a && !edge) || (pl->pack_b && !bufB)) {
        F(naive)(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, relu);
        return;
    }
    for (ptrdiff_t ic = 0; ic < M; ic += MC) {
        const ptrdiff_t mc = M - ic < MC ? M - ic : MC;
        for (ptrdiff_t pc = 0; pc < K; pc += kc) {
            const ptrdiff_t kcur = K - pc < kc ? K - pc : kc;
            const int last = pc + kcur >= K;
            const T *Ablk = A + (transa ? pc * lda + ic : ic * lda + pc);
            if (pl->pack_a) bk->pack_a(transa, Ablk, lda, mc, kcur, bufA);
            EPI e;
            e.alpha = alpha;
            e.beta = pc == 0 ? beta : (T)1;
            e.relu = last ? relu : 0;
            for (ptrdiff_t jc = 0; jc < N; jc += NC) {
                const ptrdiff_t nc = N - jc < NC ? N - jc : NC;
                const T *Bblk = B + (transb ? jc * ldb + pc : pc * ldb + jc);
                if (pl->pack_b) bk->pack_b(transb, Bblk, ldb, nc, kcur, bufB);
                for (ptrdiff_t ir = 0; ir < mc; ir += mr) {
                    const int mm = (int)(mc - ir < mr ? mc - ir : mr);
                    const T *ap;
                    ptrdiff_t rsa, csa;
                    UKR ukr;
                    if (pl->pack_a) {
                        ap = bufA + ir * kcur; rsa = 1; csa = mr; ukr = bk->packed;
                    } else if (mm == mr && !transa) {
                        ap = Ablk + ir * lda; rsa = lda; csa = 1; ukr = bk->rows;
                    } else if (mm == mr) {
                        ap = Ablk + ir; rsa = 1; csa = lda; ukr = bk->cols;
                    } else {  /* a partial panel read in place would overrun A: pack it */
                        bk->pack_a(transa, Ablk + (transa ? ir : ir * lda), lda, mm, kcur, edge);
                        ap = edge; rsa = 1; csa = mr; ukr = bk->packed;
                    }
                    T *crow = C + (ic + ir) * ldc + jc;
                    for (ptrdiff_t jr = 0; jr < nc; jr += nr) {
                        const int nn = (int)(nc - jr < nr ? nc - jr : nr);
                        const T *bp = pl->pack_b ? bufB + jr * kcur : Bblk + jr;
                        e.bias = last && bias ? bias + jc + jr : NULL;
                        ukr(kcur, ap, rsa, csa, bp, pl->pack_b ? nr : ldb, crow + jr, ldc, mm,
                            nn, &e);
                    }
                }
            }
        }
    }
}

#ifdef _OPENMP
/* Split the tile grid (tm x tn tiles of mr x nr) among nthr threads as a gm x gn grid: the
 * least per-thread cost, counting FMA lanes per depth step plus the panels each thread packs
 * or reads in place (an element costs about one vector FMA, 16 lanes: an A panel read in
 * place still comes from L2 or beyond once per thread that uses it); ties go to the row
 * split, whose threads write disjoint rows of C. */
static void F(grid)(ptrdiff_t tm, ptrdiff_t tn, int mr, int nr, const F(plan) *pl, int nthr,
                    int *gm, int *gn)
{
    double best = -1.0;
    *gm = nthr; *gn = 1;
    for (int a = nthr; a >= 1; --a) {
        if (nthr % a) continue;
        const int b = nthr / a;
        const double rows = (double)((tm + a - 1) / a), cols = (double)((tn + b - 1) / b);
        const double cost = rows * cols * mr * nr + (pl->pack_b ? 16.0 * cols * nr : 0.0) +
                            16.0 * rows * mr;
        if (best < 0.0 || cost < best) {
            best = cost; *gm = a; *gn = b;
        }
    }
}

/* Rows [r0, r1) of the t-th of g even shares of n units of `unit` elements (clipped to len). */
static void F(share)(ptrdiff_t units, int g, int t, int unit, ptrdiff_t len, ptrdiff_t *r0,
                     ptrdiff_t *r1)
{
    ptrdiff_t u0 = units * t / g, u1 = units * (t + 1) / g;
    *r0 = u0 * unit; *r1 = u1 * unit;
    if (*r0 > len) *r0 = len;
    if (*r1 > len) *r1 = len;
}

#endif

void PUBLIC(int transa, int transb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, T alpha,
            const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T beta,
            T *C, ptrdiff_t ldc, const T *bias, int act, int nthreads)
{
    if (M <= 0 || N <= 0) return;
    const int relu = act == FN_ACT_RELU;
    if (K <= 0 || alpha == (T)0) {
        F(scale_only)(M, N, beta, C, ldc, bias, relu);
        return;
    }
    const BLK *bk = &fn_gemm_current()->FIELD;
    const int mr = bk->mr, nr = bk->nr;
    const ptrdiff_t tm = (M + mr - 1) / mr, tn = (N + nr - 1) / nr;

    /* Path choice: the shape only (see the determinism note at the top). */
    F(plan) pl;
    /* A is read in place (no packing) when its micro-panel is reused by few column tiles, or
     * when it is shallow and its rows cannot alias in L1 (row stride not a multiple of 1 KiB);
     * otherwise packing pays for itself. */
    pl.pack_a = tn > 4 && !(K <= 256 && (lda * (ptrdiff_t)sizeof(T)) % 1024 != 0);
    pl.pack_b = transb || tn > 4;

    if (nthreads < 1) nthreads = 1;
    const double work = (double)M * (double)N * (double)K;
    if (work < 200000.0) nthreads = 1;  /* a fork/join costs ~2 us: about 200k FMAs here */

    /* Split-K: too few tiles to share, a long depth. */
    const ptrdiff_t nchunks = (tm * tn <= 4 && K >= 4096) ? (K / 2048 < 16 ? K / 2048 : 16) : 1;
    if (nchunks > 1) {
        const ptrdiff_t chunk = (K + nchunks - 1) / nchunks;
        T *part = (T *)fn_scratch(3, sizeof(T) * (size_t)nchunks * (size_t)M * (size_t)N);
        if (part == NULL) {
            F(naive)(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, relu);
            return;
        }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
        {
            FN_FTZ_BEGIN
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (ptrdiff_t ch = 0; ch < nchunks; ++ch) {
                const ptrdiff_t p0 = ch * chunk;
                const ptrdiff_t kk = K - p0 < chunk ? K - p0 : chunk;
                T *P = part + ch * M * N;
                if (kk <= 0) {
                    for (ptrdiff_t q = 0; q < M * N; ++q) P[q] = (T)0;
                    continue;
                }
                F(serial)(bk, &pl, transa, transb, M, N, kk, (T)1,
                          A + (transa ? p0 * lda : p0), lda, B + (transb ? p0 : p0 * ldb), ldb,
                          (T)0, P, N, NULL, 0);
            }
            /* implicit barrier; then sum the chunks in chunk order, rows shared out */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (ptrdiff_t i = 0; i < M; ++i) {
                T *c = C + i * ldc;
                for (ptrdiff_t j = 0; j < N; ++j) {
                    T s = part[i * N + j];
                    for (ptrdiff_t ch = 1; ch < nchunks; ++ch) s += part[(ch * M + i) * N + j];
                    T r = alpha * s;
                    if (beta != (T)0) r += beta * c[j];
                    if (bias) r += bias[j];
                    if (relu) r = r > (T)0 ? r : (T)0;
                    c[j] = r;
                }
            }
            FN_FTZ_END
        }
        return;
    }

    if (nthreads == 1) {
        FN_FTZ_BEGIN
        F(serial)(bk, &pl, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,
                  relu);
        FN_FTZ_END
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
    {
        FN_FTZ_BEGIN
        const int nthr = omp_get_num_threads(), tid = omp_get_thread_num();
        int gm, gn;
        F(grid)(tm, tn, mr, nr, &pl, nthr, &gm, &gn);
        ptrdiff_t i0, i1, j0, j1;
        F(share)(tm, gm, tid / gn, mr, M, &i0, &i1);
        F(share)(tn, gn, tid % gn, nr, N, &j0, &j1);
        if (i1 > i0 && j1 > j0)
            F(serial)(bk, &pl, transa, transb, i1 - i0, j1 - j0, K, alpha,
                      A + (transa ? i0 : i0 * lda), lda, B + (transb ? j0 * ldb : j0), ldb,
                      beta, C + i0 * ldc + j0, ldc, bias ? bias + j0 : NULL, relu);
        FN_FTZ_END
    }
#else
    F(serial)(bk, &pl, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, relu);
#endif
}

#undef F
#undef CAT
#undef CAT_
