/* Run-time choice of the GEMM path: one table of block sizes + microkernels per ISA.
 *
 * The best path this CPU and this build support is chosen on first use, unless FASTNET_ISA
 * (avx512 | avx2 | generic) names another usable one.  fn_gemm_set_isa switches at run time;
 * the table pointer is atomic and each GEMM call reads it once, so a switch never tears a call.
 * Only groups compiled into this build (FN_HAVE_* from the generated fn_isa_config.h) are named.
 * The AVX-512 path has one CPU-dependent option, its broadcast mode, chosen with it.
 */
#include <stdlib.h>
#include <string.h>
#include "gemm_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FN_X86_GNUC 1
#endif

#ifdef FN_HAVE_AVX512
static int cpu_has_avx512(void)
{
#if defined(FN_X86_GNUC)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}
#endif

#ifdef FN_HAVE_AVX2
static int cpu_has_avx2(void)
{
#if defined(FN_X86_GNUC)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}
#endif

/* ---- the AVX-512 broadcast mode (see csrc/avx512/kernel_impl.h) ------------------------- */
#ifdef FN_HAVE_AVX512
static int bcast_chosen = 0;  /* 1 once a mode is set: the default never overrides a choice */

static int bcast_default(int use_env)
{
    const char *env = use_env ? getenv("FASTNET_GEMM_BROADCAST") : NULL;
    if (env && strcmp(env, "memory") == 0) return 1;
    if (env && strcmp(env, "register") == 0) return 0;
#if defined(FN_X86_GNUC)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd");
#else
    return 0;
#endif
}
#endif

static void broadcast_init(void)
{
#ifdef FN_HAVE_AVX512
    int expected = 0;
    if (__atomic_load_n(&bcast_chosen, __ATOMIC_ACQUIRE)) return;
    const int mem = bcast_default(1);
    if (__atomic_compare_exchange_n(&bcast_chosen, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        __atomic_store_n(&fn_avx512_bcast_mem, mem, __ATOMIC_RELAXED);
#endif
}

int fn_gemm_set_broadcast(const char *name)
{
#ifdef FN_HAVE_AVX512
    int mem;
    if (name == NULL) return -1;
    if (strcmp(name, "memory") == 0) mem = 1;
    else if (strcmp(name, "register") == 0) mem = 0;
    else if (strcmp(name, "auto") == 0) mem = bcast_default(0);
    else return -1;
    __atomic_store_n(&bcast_chosen, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&fn_avx512_bcast_mem, mem, __ATOMIC_RELAXED);
    return 0;
#else
    (void)name;
    return -1;
#endif
}

const char *fn_gemm_broadcast(void)
{
#ifdef FN_HAVE_AVX512
    broadcast_init();
    return __atomic_load_n(&fn_avx512_bcast_mem, __ATOMIC_RELAXED) ? "memory" : "register";
#else
    return "";
#endif
}

/* The usable table called `name`, or NULL. */
static const fn_gemm_table *usable_table(const char *name)
{
    if (name == NULL) return NULL;
#ifdef FN_HAVE_AVX512
    if (strcmp(name, "avx512") == 0) return cpu_has_avx512() ? &fn_table_avx512 : NULL;
#endif
#ifdef FN_HAVE_AVX2
    if (strcmp(name, "avx2") == 0) return cpu_has_avx2() ? &fn_table_avx2 : NULL;
#endif
    if (strcmp(name, "generic") == 0) return &fn_table_generic;
    return NULL;
}

static const fn_gemm_table *best_table(void)
{
    const fn_gemm_table *t;
    if ((t = usable_table("avx512")) != NULL) return t;
    if ((t = usable_table("avx2")) != NULL) return t;
    return &fn_table_generic;
}

static const fn_gemm_table *current_table = NULL;  /* accessed with __atomic builtins only */

#if defined(__GNUC__)
#define LOAD_TABLE() __atomic_load_n(&current_table, __ATOMIC_ACQUIRE)
#define STORE_TABLE(t) __atomic_store_n(&current_table, (t), __ATOMIC_RELEASE)
#define CAS_TABLE(expected, t)                                                                   \
    __atomic_compare_exchange_n(&current_table, (expected), (t), 0, __ATOMIC_ACQ_REL,            \
                                __ATOMIC_ACQUIRE)
#else  /* pointer-sized stores are atomic on the platforms MSVC targets */
#define LOAD_TABLE() (*(const fn_gemm_table *volatile *)&current_table)
#define STORE_TABLE(t) (*(const fn_gemm_table *volatile *)&current_table = (t))
#define CAS_TABLE(expected, t) (STORE_TABLE(t), 1)
#endif

const fn_gemm_table *fn_gemm_current(void)
{
    const fn_gemm_table *t = LOAD_TABLE();
    if (t == NULL) {
        broadcast_init();
        const fn_gemm_table *chosen = usable_table(getenv("FASTNET_ISA"));
        const fn_gemm_table *expected = NULL;
        if (chosen == NULL) chosen = best_table();
        /* A concurrent fn_gemm_set_isa wins over the first-use default. */
        if (CAS_TABLE(&expected, chosen)) t = chosen;
        else t = LOAD_TABLE();
    }
    return t;
}

const char *fn_gemm_isa(void) { return fn_gemm_current()->name; }

int fn_gemm_set_isa(const char *name)
{
    const fn_gemm_table *t = usable_table(name);
    if (t == NULL) return -1;
    broadcast_init();
    STORE_TABLE(t);
    return 0;
}

const char *fn_gemm_available_isas(void)
{
    int a512 = usable_table("avx512") != NULL, a2 = usable_table("avx2") != NULL;
    if (a512 && a2) return "avx512,avx2,generic";
    if (a512) return "avx512,generic";
    if (a2) return "avx2,generic";
    return "generic";
}

int fn_gemm_blocking(const char *name, int use_double, int sizes[5])
{
    const fn_gemm_table *t = name ? usable_table(name) : fn_gemm_current();
    if (t == NULL) return -1;
    if (use_double) {
        sizes[0] = t->d.mr; sizes[1] = t->d.nr; sizes[2] = t->d.kc;
        sizes[3] = t->d.mc; sizes[4] = t->d.nc;
    } else {
        sizes[0] = t->s.mr; sizes[1] = t->s.nr; sizes[2] = t->s.kc;
        sizes[3] = t->s.mc; sizes[4] = t->s.nc;
    }
    return 0;
}
