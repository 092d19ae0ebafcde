/* Run-time choice of the int8 GEMM path.  FASTNET_INT8_ISA names a path directly; otherwise
 * FASTNET_ISA, which forces the float path (csrc/dispatch.c), forces the matching int8 one, so
 * one variable emulates an older CPU for both.  Paths are ordered: a CPU that runs one runs
 * every lower one. */
#include <stdlib.h>
#include <string.h>
#include "int8_internal.h"

enum { Q8_GENERIC, Q8_AVX2, Q8_VNNI, Q8_PATHS };
static const char *const path_names[Q8_PATHS] = {"generic", "avx2", "avx512vnni"};

/* The highest path this CPU can run, compiled into this build or not. */
static int detect_level(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return Q8_VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Q8_AVX2;
#endif
    return Q8_GENERIC;
}

static int current = -1;   /* the path in use; -1 until first use */
static int level = -1;     /* detect_level(), once */

#if defined(__GNUC__)
#define LOAD(v) __atomic_load_n(&(v), __ATOMIC_ACQUIRE)
#define STORE(v, x) __atomic_store_n(&(v), (x), __ATOMIC_RELEASE)
#else   /* int stores are atomic on every platform MSVC targets */
#define LOAD(v) (*(volatile int *)&(v))
#define STORE(v, x) (*(volatile int *)&(v) = (x))
#endif

static int cpu_level(void)
{
    int l = LOAD(level);
    if (l < 0) STORE(level, l = detect_level());   /* idempotent: a race stores the same */
    return l;
}

/* The table of path p if this build has it and this CPU runs it, else NULL. */
static const fn_q8_table *usable(int p)
{
    if (p < 0 || p > cpu_level()) return NULL;
#ifdef FN_HAVE_INT8_AVX512VNNI
    if (p == Q8_VNNI) return &fn_q8_table_avx512vnni;
#endif
#ifdef FN_HAVE_INT8_AVX2
    if (p == Q8_AVX2) return &fn_q8_table_avx2;
#endif
    return p == Q8_GENERIC ? &fn_q8_table_generic : NULL;
}

static int path_named(const char *name)
{
    for (int p = 0; name != NULL && p < Q8_PATHS; ++p)
        if (strcmp(name, path_names[p]) == 0) return p;
    return -1;
}

/* The best usable path at or below p. */
static int best_at_most(int p)
{
    while (p > Q8_GENERIC && usable(p) == NULL) --p;
    return p;
}

static int initial_path(void)
{
    const int direct = path_named(getenv("FASTNET_INT8_ISA"));
    const char *fisa = getenv("FASTNET_ISA");
    if (usable(direct) != NULL) return direct;
    if (fisa != NULL && strcmp(fisa, "avx512") == 0) return best_at_most(Q8_VNNI);
    if (fisa != NULL && strcmp(fisa, "avx2") == 0) return best_at_most(Q8_AVX2);
    if (fisa != NULL && strcmp(fisa, "generic") == 0) return Q8_GENERIC;
    return best_at_most(Q8_PATHS - 1);
}

const fn_q8_table *fn_q8_current(void)
{
    int p = LOAD(current);
    if (p < 0) {
        int unset = -1;
        p = initial_path();
#if defined(__GNUC__)
        /* a concurrent fn_q8_set_isa wins over the first-use default */
        if (!__atomic_compare_exchange_n(&current, &unset, p, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            p = unset;
#else
        (void)unset;
        STORE(current, p);
#endif
    }
    return usable(p);
}

const char *fn_q8_isa(void) { return fn_q8_current()->name; }

int fn_q8_mr(void) { return fn_q8_current()->mr; }

int fn_q8_set_isa(const char *name)
{
    const int p = path_named(name);
    if (usable(p) == NULL) return -1;
    STORE(current, p);
    return 0;
}

const char *fn_q8_available_isas(void)
{
    static const char *const lists[] = {"generic", "avx2,generic", "avx512vnni,generic",
                                        "avx512vnni,avx2,generic"};
    return lists[(usable(Q8_AVX2) != NULL) | (usable(Q8_VNNI) != NULL) << 1];
}
