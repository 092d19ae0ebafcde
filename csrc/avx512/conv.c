/* Convolution kernels for this directory's ISA flags, instantiated from csrc/conv/conv_impl.h.
 * AVX-512 tiles (measured on Zen 4 with the conv2 / conv3 / 64->128 32x32 shapes): forward
 * 5 pixels x 4 zmm (20 accumulators: fewer broadcasts per FMA than 8 x 2, which ran 1-2%
 * slower), backward input 4 pixels x 4 zmm (one 64-channel tap per tile: half the dx
 * read-modify-writes of x 2), weight gradient 8 input channels x 2 zmm. */
#include <stdint.h>
#include "conv/conv_internal.h"

#define ISA avx512
#define VBYTES 64
#ifndef FMR   /* -D overrides, for tuning experiments */
#define FMR 5
#define FNV 4
#define BMR 4
#define BNV 4
#define WMR 8
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
