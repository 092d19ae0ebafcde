/* Convolution kernels for the baseline ISA, instantiated from csrc/conv/conv_impl.h: tiles of
 * 4 x 2 vectors of 16 bytes (SSE2 on x86-64; any CPU with GCC vector extensions). */
#include <stdint.h>
#include "conv/conv_internal.h"

#define ISA generic
#define VBYTES 16
#ifndef FMR   /* -D overrides, for tuning experiments */
#define FMR 4
#define FNV 2
#define BMR 4
#define BNV 2
#define WMR 4
#define WNV 2
#endif

#define T float
#define IT int32_t
#define SUF s
#include "conv/conv_impl.h"
#undef T
#undef IT
#undef SUF

#define T double
#define IT int64_t
#define SUF d
#include "conv/conv_impl.h"
#undef T
#undef IT
#undef SUF

FN_CONV_TABLE
