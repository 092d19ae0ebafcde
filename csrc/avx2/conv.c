/* Convolution kernels for this directory's ISA flags, instantiated from csrc/conv/conv_impl.h.
 * AVX2 + FMA tiles: 6 x 2 ymm (12 accumulators of 16 registers; 8 x 2 would spill). */
#include <stdint.h>
#include "conv/conv_internal.h"

#define ISA avx2
#define VBYTES 32
#ifndef FMR   /* -D overrides, for tuning experiments */
#define FMR 6
#define FNV 2
#define BMR 6
#define BNV 2
#define WMR 6
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
