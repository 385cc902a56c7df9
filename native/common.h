/*
 * Shared by the addon's C files (kernels.c, frozen.c): Node-API argument helpers and the vectorised
 * row primitives (max, Σexp, scaled softmax). Everything is static: each file gets its own copy.
 */
#ifndef LOWRANK_NATIVE_COMMON_H
#define LOWRANK_NATIVE_COMMON_H

#include <node_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifdef __APPLE__
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif

#define CHECK(call)                                                                   \
  do {                                                                                \
    if ((call) != napi_ok) {                                                          \
      napi_throw_error(env, NULL, "lowrank_native: bad arguments (" #call ")");         \
      return NULL;                                                                    \
    }                                                                                 \
  } while (0)

static napi_value throw_range(napi_env env, const char *what) {
  char message[160];
  snprintf(message, sizeof message, "lowrank_native: %s lies outside the heap view", what);
  napi_throw_range_error(env, NULL, message);
  return NULL;
}

/* Fetches exactly `count` arguments into argv; otherwise throws `usage` and returns 0. */
static int get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv, const char *usage) {
  size_t argc = count;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != count) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

/* Elements a row-major operand of `rows` x `cols` (stored transposed when `trans`) spans. */
static int64_t extent(int trans, int64_t rows, int64_t cols, int64_t ld) {
  int64_t stored_rows = trans ? cols : rows;
  int64_t stored_cols = trans ? rows : cols;
  if (stored_rows == 0 || stored_cols == 0) return 0;
  return (stored_rows - 1) * ld + stored_cols;
}

static napi_status float32_view(napi_env env, napi_value value, float **data, size_t *length) {
  napi_typedarray_type type;
  void *raw = NULL;
  napi_status status = napi_get_typedarray_info(env, value, &type, length, &raw, NULL, NULL);
  if (status != napi_ok) return status;
  if (type != napi_float32_array) return napi_invalid_arg;
  *data = (float *)raw;
  return napi_ok;
}

static napi_status uint32_view(napi_env env, napi_value value, uint32_t **data, size_t *length) {
  napi_typedarray_type type;
  void *raw = NULL;
  napi_status status = napi_get_typedarray_info(env, value, &type, length, &raw, NULL, NULL);
  if (status != napi_ok) return status;
  if (type != napi_uint32_array) return napi_invalid_arg;
  *data = (uint32_t *)raw;
  return napi_ok;
}


/*
 * The row loops use GCC/Clang vector extensions (8 floats), which compile to whatever the target
 * has: two SSE2 registers by default, one AVX2 register in the clone that x86-64 Linux builds pick
 * at load time on CPUs that have it (target_clones). No -march=native: a packaged app must run on
 * CPUs other than the one it was built on.
 */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

static inline v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
static inline v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
/* Lane-wise a > b ? a : b, and lower bound, with masks (C has no vector ?:). */
static inline v8f vselect(v8i mask, v8f a, v8f b) { return (v8f)((mask & (v8i)a) | (~mask & (v8i)b)); }
static inline v8f vmax(v8f a, v8f b) { return vselect(a > b, a, b); }

/*
 * exp(x) for x <= 0 (softmax arguments after subtracting the row max): x = n·ln2 + r with
 * |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial (relative error ~1e-7), 2^n from the float's
 * exponent bits. Below -87.3 the result is clamped to ~1e-38, where the true value no longer
 * changes a float32 sum that contains at least one 1 (the row maximum).
 */
static inline v8f exp_nonpositive(v8f x) {
  x = vmax(x, splat(-87.3f));
  v8f n = x * splat(1.44269504088896341f);
  n = (n + splat(12582912.0f)) - splat(12582912.0f); /* round to nearest (1.5·2^23 trick) */
  v8f r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  return p * (v8f)bits;
}

static float horizontal_sum(v8f v) {
  float sum = 0;
  for (int l = 0; l < 8; l++) sum += v[l];
  return sum;
}

/* A row's tail (v % 8 elements) padded into one vector: pad with `fill`. */
static inline v8f load_tail(const float *p, int32_t count, float fill) {
  v8f v = splat(fill);
  for (int32_t l = 0; l < count; l++) v[l] = p[l];
  return v;
}

/*
 * The row's maximum, or NaN when any value is NaN: a comparison skips a NaN, and exp_nonpositive's
 * clamp would then turn it into ~0, so a NaN logit outside the target column would leave a finite
 * loss and hide a diverging run (tf's logSumExp gives NaN; so does this).
 */
HOT static float row_max(const float *z, int32_t v) {
  v8f m = splat(-INFINITY);
  v8i nan = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t j = 0;
  for (; j + 8 <= v; j += 8) {
    v8f x = load8(z + j);
    m = vmax(x, m);
    nan |= x != x;
  }
  v8f tail = load_tail(z + j, v - j, -INFINITY);
  m = vmax(tail, m);
  nan |= tail != tail;
  float best = m[0];
  for (int l = 1; l < 8; l++) best = m[l] > best ? m[l] : best;
  for (int l = 0; l < 8; l++) if (nan[l]) return NAN;
  return best;
}

HOT static float row_sum_exp(const float *z, int32_t v, float shift) {
  v8f sum = splat(0), s = splat(shift);
  int32_t j = 0;
  for (; j + 8 <= v; j += 8) sum += exp_nonpositive(load8(z + j) - s);
  float total = horizontal_sum(sum);
  if (j < v) {
    v8f tail = exp_nonpositive(load_tail(z + j, v - j, shift) - s);
    for (int32_t l = 0; l < v - j; l++) total += tail[l];
  }
  return total;
}

/* out_j = exp(z_j − shift)·scale */
HOT static void row_softmax_scaled(const float *z, float *out, int32_t v, float shift, float scale) {
  v8f s = splat(shift), k = splat(scale);
  int32_t j = 0;
  for (; j + 8 <= v; j += 8) store8(out + j, exp_nonpositive(load8(z + j) - s) * k);
  if (j < v) {
    v8f tail = exp_nonpositive(load_tail(z + j, v - j, shift) - s) * k;
    for (int32_t l = 0; l < v - j; l++) out[j + l] = tail[l];
  }
}

static napi_status int32_view(napi_env env, napi_value value, int32_t **data, size_t *length) {
  napi_typedarray_type type;
  void *raw = NULL;
  napi_status status = napi_get_typedarray_info(env, value, &type, length, &raw, NULL, NULL);
  if (status != napi_ok) return status;
  if (type != napi_int32_array) return napi_invalid_arg;
  *data = (int32_t *)raw;
  return napi_ok;
}

#endif
