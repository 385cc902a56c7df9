/*
 * GGUF K-quant block encoders (Q4_K, Q6_K) for the export, the same computation as
 * core/export/gguf-quants.ts (ported from ggml's quantize_row_q4_K_ref / make_qkx2_quants and
 * quantize_row_q6_K_ref / make_qx_quants): the scale searches in double, the values the file stores
 * rounded to float and f16 exactly where the TypeScript rounds them (Math.fround there, a float here;
 * -ffp-contract=off keeps a*b+c from fusing), so the bytes are identical to the TypeScript's
 * (core/export/gguf-quants.test.ts compares them). The TypeScript encodes ~2 M values/s; this ~5x
 * that on one core, and the blocks are split over the cores: a 0.5 B model's q4_K_M blocks take
 * well under a minute instead of ~4.
 */
#include "common.h"
#include <pthread.h>
#include <unistd.h>

#define QK_K 256
#define Q4_K_BLOCK_BYTES (2 + 2 + 12 + QK_K / 2)
#define Q6_K_BLOCK_BYTES (QK_K / 2 + QK_K / 4 + QK_K / 16 + 2)
#define GROUP_MAX_EPS 1e-15

/* Round half to even (the TypeScript's nearestInt; rint under the default rounding mode). */
static inline double nearest_int(double x) { return rint(x); }
static inline double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static uint16_t f16_bits(float value) {
  _Float16 h = (_Float16)value;
  uint16_t bits;
  memcpy(&bits, &h, 2);
  return bits;
}
static float stored_f16(float value) { return (float)(_Float16)value; }

/* make_qkx2_quants(n, nmax, x, weights, L, &the_min, ..., rmin = -1, rdelta = 0.1, nstep = 20): fitScaleAndMin. */
static void fit_scale_and_min(const float *x, const float *weights, int n, int nmax, uint8_t *codes, uint8_t *scratch,
                              double *scale_out, double *min_out) {
  const double rmin = -1, rdelta = 0.1;
  const int nstep = 20;
  double min = x[0], max = x[0], sum_w = 0, sum_x = 0;
  for (int i = 0; i < n; i++) {
    double v = x[i];
    if (v < min) min = v;
    if (v > max) max = v;
    sum_w += weights[i];
    sum_x += (double)weights[i] * v;
  }
  if (min > 0) min = 0;
  if (max == min) {
    memset(codes, 0, (size_t)n);
    *scale_out = 0;
    *min_out = -min;
    return;
  }
  double range = max - min;
  double iscale = nmax / range;
  double scale = 1 / iscale;
  double best_error = 0;
  for (int i = 0; i < n; i++) {
    double l = clampd(nearest_int(iscale * (x[i] - min)), 0, nmax);
    codes[i] = (uint8_t)l;
    double diff = scale * l + min - x[i];
    best_error += weights[i] * diff * diff;
  }
  for (int step = 0; step <= nstep; step++) {
    iscale = (rmin + rdelta * step + nmax) / range;
    double sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
      double l = clampd(nearest_int(iscale * (x[i] - min)), 0, nmax);
      scratch[i] = (uint8_t)l;
      double w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    double det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      double this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      double this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      double error = 0;
      for (int i = 0; i < n; i++) {
        double diff = this_scale * scratch[i] + this_min - x[i];
        error += weights[i] * diff * diff;
      }
      if (error < best_error) {
        memcpy(codes, scratch, (size_t)n);
        best_error = error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *scale_out = scale;
  *min_out = -min;
}

/* get_scale_min_k4 */
static void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

static void quantize_q4_k(const float *values, int64_t blocks, uint8_t *out) {
  uint8_t codes[QK_K], scratch[32];
  float weights[32], scales[QK_K / 32], mins[QK_K / 32];
  for (int64_t b = 0; b < blocks; b++) {
    const float *x = values + b * QK_K;
    uint8_t *block = out + b * Q4_K_BLOCK_BYTES;
    memset(block, 0, Q4_K_BLOCK_BYTES);
    double max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
      const float *sub = x + 32 * j;
      float sum_x2 = 0;
      for (int l = 0; l < 32; l++) sum_x2 = sum_x2 + sub[l] * sub[l];
      float rms = sqrtf(sum_x2 / 32);
      for (int l = 0; l < 32; l++) weights[l] = rms + fabsf(sub[l]);
      double s, m;
      fit_scale_and_min(sub, weights, 32, 15, codes + 32 * j, scratch, &s, &m);
      scales[j] = (float)s;
      mins[j] = (float)m;
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? (float)(63 / max_scale) : 0;
    float inv_min = max_min > 0 ? (float)(63 / max_min) : 0;
    uint8_t *packed = block + 4;
    for (int j = 0; j < QK_K / 32; j++) {
      int ls = (int)fmin(63, nearest_int(inv_scale * scales[j]));
      int lm = (int)fmin(63, nearest_int(inv_min * mins[j]));
      if (j < 4) {
        packed[j] = (uint8_t)ls;
        packed[j + 4] = (uint8_t)lm;
      } else {
        packed[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
        packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
        packed[j] |= (uint8_t)((lm >> 4) << 6);
      }
    }
    float d_raw = (float)(max_scale / 63);
    float dmin_raw = (float)(max_min / 63);
    uint16_t d_bits = f16_bits(d_raw), dmin_bits = f16_bits(dmin_raw);
    memcpy(block, &d_bits, 2);
    memcpy(block + 2, &dmin_bits, 2);
    float d = stored_f16(d_raw), dmin = stored_f16(dmin_raw);
    /* Re-quantize against the scales as stored, which is what a reader sees. */
    for (int j = 0; j < QK_K / 32; j++) {
      int sc, m;
      scale_min_k4(j, packed, &sc, &m);
      float dj = d * (float)sc;
      if (dj == 0) continue;
      float mj = dmin * (float)m;
      for (int i = 0; i < 32; i++) {
        float q = (x[32 * j + i] + mj) / dj;
        codes[32 * j + i] = (uint8_t)fmax(0, fmin(15, nearest_int(q)));
      }
    }
    uint8_t *qs = block + 16;
    for (int j = 0; j < QK_K; j += 64) {
      for (int l = 0; l < 32; l++) qs[j / 2 + l] = (uint8_t)(codes[j + l] | (codes[j + l + 32] << 4));
    }
  }
}

/* make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL): fitSignedScale. codes hold L + nmax. */
static double fit_signed_scale(const float *x, int n, int nmax, uint8_t *codes) {
  double amax = 0, max = 0;
  for (int i = 0; i < n; i++) {
    if (fabs((double)x[i]) > amax) {
      amax = fabs((double)x[i]);
      max = x[i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    memset(codes, 0, (size_t)n);
    return 0;
  }
  double iscale = -nmax / max;
  double sum_lx = 0, sum_l2 = 0;
  for (int i = 0; i < n; i++) {
    double v = x[i];
    double l = clampd(nearest_int(iscale * v), -nmax, nmax - 1);
    codes[i] = (uint8_t)(l + nmax);
    double w = v * v;
    sum_lx += w * v * l;
    sum_l2 += w * l * l;
  }
  double scale = sum_l2 != 0 ? sum_lx / sum_l2 : 0;
  double best = scale * sum_lx;
  for (int step = -9; step <= 9; step++) {
    if (step == 0) continue;
    iscale = -(nmax + 0.1 * step) / max;
    sum_lx = 0;
    sum_l2 = 0;
    for (int i = 0; i < n; i++) {
      double v = x[i];
      double l = clampd(nearest_int(iscale * v), -nmax, nmax - 1);
      double w = v * v;
      sum_lx += w * v * l;
      sum_l2 += w * l * l;
    }
    if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
      for (int i = 0; i < n; i++) codes[i] = (uint8_t)(nmax + clampd(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

static void quantize_q6_k(const float *values, int64_t blocks, uint8_t *out) {
  uint8_t codes[QK_K];
  float scales[QK_K / 16];
  const int ql = 0, qh = QK_K / 2, sc = QK_K / 2 + QK_K / 4, d_at = QK_K / 2 + QK_K / 4 + QK_K / 16;
  for (int64_t b = 0; b < blocks; b++) {
    const float *x = values + b * QK_K;
    uint8_t *block = out + b * Q6_K_BLOCK_BYTES;
    memset(block, 0, Q6_K_BLOCK_BYTES);
    double max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < QK_K / 16; j++) {
      scales[j] = (float)fit_signed_scale(x + 16 * j, 16, 32, codes + 16 * j);
      if (fabs((double)scales[j]) > max_abs_scale) {
        max_abs_scale = fabs((double)scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < GROUP_MAX_EPS) continue; /* all zeros, d = 0 */
    float iscale = (float)(-128 / max_scale);
    float d_raw = (float)(1 / (double)iscale);
    uint16_t d_bits = f16_bits(d_raw);
    memcpy(block + d_at, &d_bits, 2);
    float d = stored_f16(d_raw);
    for (int j = 0; j < QK_K / 16; j++) block[sc + j] = (uint8_t)(int8_t)fmin(127, nearest_int(iscale * scales[j]));
    for (int j = 0; j < QK_K / 16; j++) {
      float dj = d * (float)(int8_t)block[sc + j];
      if (dj == 0) continue;
      for (int i = 0; i < 16; i++) {
        float q = x[16 * j + i] / dj;
        codes[16 * j + i] = (uint8_t)(fmax(-32, fmin(31, nearest_int(q))) + 32);
      }
    }
    for (int j = 0; j < QK_K; j += 128) {
      uint8_t *low = block + ql + j / 2;
      uint8_t *high = block + qh + j / 4;
      for (int l = 0; l < 32; l++) {
        uint8_t c0 = codes[j + l], c1 = codes[j + l + 32], c2 = codes[j + l + 64], c3 = codes[j + l + 96];
        low[l] = (uint8_t)((c0 & 0x0f) | ((c2 & 0x0f) << 4));
        low[l + 32] = (uint8_t)((c1 & 0x0f) | ((c3 & 0x0f) << 4));
        high[l] = (uint8_t)((c0 >> 4) | ((c1 >> 4) << 2) | ((c2 >> 4) << 4) | ((c3 >> 4) << 6));
      }
    }
  }
}

struct kquant_job {
  const float *values;
  int64_t blocks;
  uint8_t *out;
  int type;
};

static void *kquant_run(void *arg) {
  struct kquant_job *job = arg;
  if (job->type == 4) quantize_q4_k(job->values, job->blocks, job->out);
  else quantize_q6_k(job->values, job->blocks, job->out);
  return NULL;
}

/* quantizeKQuant(values: Float32Array, out: Uint8Array, type: 4 | 6): out holds the blocks. */
static napi_value QuantizeKQuant(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "quantizeKQuant(values: Float32Array, out: Uint8Array, type: 4 | 6)")) return NULL;
  float *values;
  size_t length;
  CHECK(float32_view(env, argv[0], &values, &length));
  napi_typedarray_type out_type;
  size_t out_length;
  void *out_raw;
  CHECK(napi_get_typedarray_info(env, argv[1], &out_type, &out_length, &out_raw, NULL, NULL));
  int32_t type;
  CHECK(napi_get_value_int32(env, argv[2], &type));
  if (out_type != napi_uint8_array || (type != 4 && type != 6) || length % QK_K != 0) {
    napi_throw_type_error(env, NULL, "quantizeKQuant: a Float32Array of whole 256-value blocks, a Uint8Array, and type 4 or 6");
    return NULL;
  }
  int64_t blocks = (int64_t)(length / QK_K);
  size_t need = (size_t)blocks * (type == 4 ? Q4_K_BLOCK_BYTES : Q6_K_BLOCK_BYTES);
  if (out_length != need) return throw_range(env, "the output");
  /* Blocks are independent: split them over the cores (each thread writes its own blocks). */
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int threads = (int)(cpus < 1 ? 1 : cpus > 16 ? 16 : cpus);
  if (blocks < 64 * threads) threads = 1;
  struct kquant_job jobs[16];
  pthread_t ids[16];
  int started = 0;
  for (int t = 0; t < threads; t++) {
    int64_t first = blocks * t / threads, last = blocks * (t + 1) / threads;
    jobs[t] = (struct kquant_job){values + first * QK_K, last - first, (uint8_t *)out_raw + (size_t)first * (type == 4 ? Q4_K_BLOCK_BYTES : Q6_K_BLOCK_BYTES), type};
    if (t > 0 && pthread_create(&ids[t], NULL, kquant_run, &jobs[t]) == 0) started |= 1 << t;
    else if (t > 0) kquant_run(&jobs[t]);
  }
  kquant_run(&jobs[0]);
  for (int t = 1; t < threads; t++) if (started & (1 << t)) pthread_join(ids[t], NULL);
  return NULL;
}

/* Adds the K-quant encoders to the addon's exports (called from kernels.c's Init). */
napi_status register_quants(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"quantizeKQuant", NULL, QuantizeKQuant, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
