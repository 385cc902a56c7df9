/*
 * Frozen weights in native memory (DESIGN.md "Memory at real size"): the base weights under an
 * adapter are read-only, so they live here, outside the 4 GB wasm heap, in their stored precision
 * (F32, F16, BF16) or quantized on load (int8 per output channel; 4-bit NF4 with block scales, the
 * QLoRA recipe), and the products that read them run on BLAS straight from here:
 *   forward  y = x·Wᵀ      (frozenMatmul mode 0)
 *   backward dx = dy·W     (frozenMatmul mode 1; a frozen weight has no dW)
 * For stored formats other than F32 a tile of W's rows is dequantised into a float32 scratch
 * buffer and multiplied at once, so no float32 copy of W ever exists. Embedding rows are gathered
 * from here too, and the tied lm_head runs fused with the cross-entropy (frozenLinearCrossEntropy):
 * vocabulary tiles with an online log-sum-exp, so the [tokens × vocab] logits never exist.
 *
 * NF4 follows bitsandbytes (Dettmers et al., QLoRA, arXiv:2305.14314, §3): blocks of 64 values in
 * the tensor's flat order, absmax per block in float32, each value x·(1/absmax) mapped to the
 * nearest of the 16 NormalFloat levels by the midpoint thresholds of bitsandbytes' dQuantizeNF4,
 * two codes per byte, the first in the high nibble; dequantised as level·absmax. int8 is row-wise
 * absmax (LLM.int8's vector-wise quantization, Dettmers et al., arXiv:2208.07339): q = rint(x·127/absmax),
 * value q·(absmax/127).
 */
#include "common.h"
#include <stdlib.h>

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_BF16 = 2, KIND_INT8 = 3, KIND_NF4 = 4 };
static const char *KIND_NAMES[] = {"f32", "f16", "bf16", "int8", "nf4"};
#define NF4_BLOCK 64
#define FROZEN_MAGIC 0x4c52465au /* "LRFZ" */
/* A dequantised tile of W stays under this many bytes; so does a tile of logits. */
#define TILE_BYTES (16u << 20)
#define LOGITS_TILE_BYTES (32u << 20)

typedef struct {
  uint32_t magic;
  int32_t kind;
  int64_t rows, cols;
  void *data;
  float *scales; /* int8: one per row; nf4: one per block of 64 in flat order */
  int64_t bytes;
} Frozen;

/* bitsandbytes' NF4 levels (functional.py get_4bit_type('nf4'), as float32). */
static const float NF4_LEVELS[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

/* bitsandbytes' dQuantizeNF4: its decision tree over the midpoints, `>` so a tie goes to the lower level. */
static inline uint8_t quantize_nf4(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0) {
    if (mantissa == 0) bits = sign;
    else { /* subnormal: normalise */
      int e = -1;
      do { e++; mantissa <<= 1; } while ((mantissa & 0x400u) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) bits = sign | 0x7f800000u | (mantissa << 13);
  else bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* float32 -> bfloat16 with round-to-nearest-even, NaN kept quiet (torch's .bfloat16()). */
static inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
  return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* float32 -> float16, round-to-nearest-even (numpy/torch .half()). */
static inline uint16_t f32_to_f16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u, abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
  if (abs < 0x38800000u) { /* subnormal half or zero */
    if (abs < 0x33000000u) return (uint16_t)sign;
    uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t half = m >> shift, rest = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

/* Values [start, start+count) of W in flat order, as float32. */
static void dequantize(const Frozen *w, int64_t start, int64_t count, float *out) {
  switch (w->kind) {
    case KIND_F32: memcpy(out, (const float *)w->data + start, (size_t)count * 4); break;
    case KIND_F16: {
      const uint16_t *src = (const uint16_t *)w->data + start;
      for (int64_t i = 0; i < count; i++) out[i] = f16_to_f32(src[i]);
      break;
    }
    case KIND_BF16: {
      const uint16_t *src = (const uint16_t *)w->data + start;
      for (int64_t i = 0; i < count; i++) out[i] = bf16_to_f32(src[i]);
      break;
    }
    case KIND_INT8: {
      const int8_t *src = (const int8_t *)w->data;
      for (int64_t i = 0; i < count; i++) {
        int64_t e = start + i;
        out[i] = (float)src[e] * w->scales[e / w->cols];
      }
      break;
    }
    case KIND_NF4: {
      const uint8_t *src = (const uint8_t *)w->data;
      for (int64_t i = 0; i < count; i++) {
        int64_t e = start + i;
        uint8_t byte = src[e >> 1];
        out[i] = NF4_LEVELS[(e & 1) ? (byte & 0x0f) : (byte >> 4)] * w->scales[e / NF4_BLOCK];
      }
      break;
    }
  }
}

/* Rows [r0, r0+count) of W as float32: a pointer into W itself when it is F32, else dequantised into `scratch`. */
static const float *rows_f32(const Frozen *w, int64_t r0, int64_t count, float *scratch) {
  if (w->kind == KIND_F32) return (const float *)w->data + r0 * w->cols;
  dequantize(w, r0 * w->cols, count * w->cols, scratch);
  return scratch;
}

static int64_t tile_rows(const Frozen *w, uint32_t budget) {
  int64_t r = (int64_t)budget / (4 * (w->cols > 0 ? w->cols : 1));
  if (r < 1) r = 1;
  return r > w->rows ? w->rows : r;
}

static void finalize_frozen(napi_env env, void *data, void *hint) {
  (void)hint;
  Frozen *w = (Frozen *)data;
  int64_t adjusted;
  if (w->data != NULL) napi_adjust_external_memory(env, -w->bytes, &adjusted);
  free(w->data);
  free(w->scales);
  w->magic = 0;
  free(w);
}

static Frozen *get_frozen(napi_env env, napi_value value) {
  napi_valuetype type;
  void *raw = NULL;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external || napi_get_value_external(env, value, &raw) != napi_ok ||
      raw == NULL || ((Frozen *)raw)->magic != FROZEN_MAGIC) {
    napi_throw_type_error(env, NULL, "lowrank_native: expected a frozen weight handle");
    return NULL;
  }
  Frozen *w = (Frozen *)raw;
  if (w->data == NULL) {
    napi_throw_error(env, NULL, "lowrank_native: the frozen weight was freed");
    return NULL;
  }
  return w;
}

static int kind_of(napi_env env, napi_value value, int32_t *kind) {
  char name[8];
  size_t length;
  if (napi_get_value_string_utf8(env, value, name, sizeof name, &length) == napi_ok) {
    for (int32_t k = 0; k < 5; k++) {
      if (strcmp(name, KIND_NAMES[k]) == 0) {
        *kind = k;
        return 1;
      }
    }
  }
  napi_throw_type_error(env, NULL, "lowrank_native: a storage kind is one of f32, f16, bf16, int8, nf4");
  return 0;
}

/* Fills `out` (count floats) from the source array in its own format, starting at flat index `start`. */
static void source_values(int32_t source_kind, const void *source, int64_t start, int64_t count, float *out) {
  Frozen view = {FROZEN_MAGIC, source_kind, 1, count, (void *)source, NULL, 0};
  dequantize(&view, start, count, out);
}

/*
 * frozenCreate(source: Float32Array | Uint16Array, sourceKind: 'f32'|'f16'|'bf16', rows, cols,
 *              kind: 'f32'|'f16'|'bf16'|'int8'|'nf4') -> handle
 * Copies (converting or quantizing) a [rows, cols] row-major weight into native memory.
 */
static napi_value FrozenCreate(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv, "lowrank_native.frozenCreate takes (source, sourceKind, rows, cols, kind)")) return NULL;
  napi_typedarray_type type;
  size_t length;
  void *source;
  CHECK(napi_get_typedarray_info(env, argv[0], &type, &length, &source, NULL, NULL));
  int32_t source_kind, kind;
  if (!kind_of(env, argv[1], &source_kind) || !kind_of(env, argv[4], &kind)) return NULL;
  int64_t rows, cols;
  CHECK(napi_get_value_int64(env, argv[2], &rows));
  CHECK(napi_get_value_int64(env, argv[3], &cols));
  int source_ok = (source_kind == KIND_F32 && type == napi_float32_array) ||
                  ((source_kind == KIND_F16 || source_kind == KIND_BF16) && type == napi_uint16_array);
  if (!source_ok || rows < 1 || cols < 1 || (int64_t)length != rows * cols) {
    napi_throw_range_error(env, NULL, "lowrank_native.frozenCreate: the source must be a Float32Array (f32) or Uint16Array "
                                      "(f16, bf16 bits) of rows·cols values");
    return NULL;
  }
  int64_t n = rows * cols;
  Frozen *w = (Frozen *)calloc(1, sizeof *w);
  if (w == NULL) goto out_of_memory;
  w->magic = FROZEN_MAGIC;
  w->kind = kind;
  w->rows = rows;
  w->cols = cols;
  int64_t data_bytes = kind == KIND_F32 ? 4 * n : kind == KIND_INT8 ? n : kind == KIND_NF4 ? (n + 1) / 2 : 2 * n;
  int64_t scale_count = kind == KIND_INT8 ? rows : kind == KIND_NF4 ? (n + NF4_BLOCK - 1) / NF4_BLOCK : 0;
  w->data = malloc((size_t)data_bytes);
  w->scales = scale_count ? (float *)malloc((size_t)scale_count * 4) : NULL;
  if (w->data == NULL || (scale_count && w->scales == NULL)) goto out_of_memory;
  w->bytes = data_bytes + 4 * scale_count;

  if (kind == source_kind) {
    memcpy(w->data, source, (size_t)data_bytes);
  } else if (kind == KIND_INT8) {
    float *row = (float *)malloc((size_t)cols * 4);
    if (row == NULL) goto out_of_memory;
    int8_t *q = (int8_t *)w->data;
    for (int64_t r = 0; r < rows; r++) {
      source_values(source_kind, source, r * cols, cols, row);
      float absmax = 0;
      for (int64_t c = 0; c < cols; c++) absmax = fabsf(row[c]) > absmax ? fabsf(row[c]) : absmax;
      float inverse = absmax > 0 ? 127.0f / absmax : 0.0f;
      w->scales[r] = absmax / 127.0f;
      for (int64_t c = 0; c < cols; c++) {
        float v = rintf(row[c] * inverse);
        q[r * cols + c] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
      }
    }
    free(row);
  } else {
    /* Elementwise targets (f32/f16/bf16) and NF4, in chunks of whole NF4 blocks. */
    const int64_t chunk = NF4_BLOCK * 4096;
    float *values = (float *)malloc((size_t)chunk * 4);
    if (values == NULL) goto out_of_memory;
    if (kind == KIND_NF4) memset(w->data, 0, (size_t)data_bytes);
    for (int64_t start = 0; start < n; start += chunk) {
      int64_t count = n - start < chunk ? n - start : chunk;
      source_values(source_kind, source, start, count, values);
      if (kind == KIND_F32) memcpy((float *)w->data + start, values, (size_t)count * 4);
      else if (kind == KIND_BF16) for (int64_t i = 0; i < count; i++) ((uint16_t *)w->data)[start + i] = f32_to_bf16(values[i]);
      else if (kind == KIND_F16) for (int64_t i = 0; i < count; i++) ((uint16_t *)w->data)[start + i] = f32_to_f16(values[i]);
      else {
        uint8_t *packed = (uint8_t *)w->data;
        for (int64_t b = 0; b < count; b += NF4_BLOCK) {
          int64_t size = count - b < NF4_BLOCK ? count - b : NF4_BLOCK;
          float absmax = 0;
          for (int64_t i = 0; i < size; i++) absmax = fabsf(values[b + i]) > absmax ? fabsf(values[b + i]) : absmax;
          w->scales[(start + b) / NF4_BLOCK] = absmax;
          /* An all-zero block: every value is the 0 level (bitsandbytes would divide by zero). */
          float inverse = absmax > 0 ? 1.0f / absmax : 0.0f;
          for (int64_t i = 0; i < size; i++) {
            int64_t e = start + b + i;
            uint8_t code = quantize_nf4(values[b + i] * inverse);
            packed[e >> 1] |= (e & 1) ? code : (uint8_t)(code << 4);
          }
        }
      }
    }
    free(values);
  }
  napi_value handle;
  int64_t adjusted;
  if (napi_create_external(env, w, finalize_frozen, NULL, &handle) != napi_ok) {
    free(w->data);
    free(w->scales);
    free(w);
    napi_throw_error(env, NULL, "lowrank_native.frozenCreate: cannot create the handle");
    return NULL;
  }
  napi_adjust_external_memory(env, w->bytes, &adjusted);
  return handle;

out_of_memory:
  if (w != NULL) {
    free(w->data);
    free(w->scales);
    free(w);
  }
  napi_throw_range_error(env, NULL, "lowrank_native.frozenCreate: out of memory");
  return NULL;
}

/* frozenFree(handle): releases the memory now (the handle then refuses every use). */
static napi_value FrozenFree(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "lowrank_native.frozenFree takes a handle")) return NULL;
  Frozen *w = get_frozen(env, argv[0]);
  if (w == NULL) return NULL;
  int64_t adjusted;
  napi_adjust_external_memory(env, -w->bytes, &adjusted);
  free(w->data);
  free(w->scales);
  w->data = NULL;
  w->scales = NULL;
  w->bytes = 0;
  return NULL;
}

/* frozenInfo(handle) -> [rows, cols, bytes, kind name] */
static napi_value FrozenInfo(napi_env env, napi_callback_info info) {
  napi_value argv[1], result, item;
  if (!get_args(env, info, 1, argv, "lowrank_native.frozenInfo takes a handle")) return NULL;
  Frozen *w = get_frozen(env, argv[0]);
  if (w == NULL) return NULL;
  CHECK(napi_create_array_with_length(env, 4, &result));
  CHECK(napi_create_int64(env, w->rows, &item));
  CHECK(napi_set_element(env, result, 0, item));
  CHECK(napi_create_int64(env, w->cols, &item));
  CHECK(napi_set_element(env, result, 1, item));
  CHECK(napi_create_int64(env, w->bytes, &item));
  CHECK(napi_set_element(env, result, 2, item));
  CHECK(napi_create_string_utf8(env, KIND_NAMES[w->kind], NAPI_AUTO_LENGTH, &item));
  CHECK(napi_set_element(env, result, 3, item));
  return result;
}

/* frozenRows(handle, firstRow, count, out: Float32Array): rows [firstRow, firstRow+count) as float32 into out. */
static napi_value FrozenRows(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv, "lowrank_native.frozenRows takes (handle, firstRow, count, out)")) return NULL;
  Frozen *w = get_frozen(env, argv[0]);
  if (w == NULL) return NULL;
  int64_t first, count;
  float *out;
  size_t length;
  CHECK(napi_get_value_int64(env, argv[1], &first));
  CHECK(napi_get_value_int64(env, argv[2], &count));
  CHECK(float32_view(env, argv[3], &out, &length));
  if (first < 0 || count < 0 || first + count > w->rows || (int64_t)length < count * w->cols) {
    napi_throw_range_error(env, NULL, "lowrank_native.frozenRows: rows outside the weight, or out too short");
    return NULL;
  }
  dequantize(w, first * w->cols, count * w->cols, out);
  return NULL;
}

/* The heap view and an element offset range inside it, checked. */
static int heap_range(napi_env env, size_t heap_length, int64_t offset, int64_t count, const char *what) {
  if (offset < 0 || count < 0 || offset + count > (int64_t)heap_length) {
    throw_range(env, what);
    return 0;
  }
  return 1;
}

/*
 * frozenMatmul(handle, heap: Float32Array, xOffset, n, outOffset, mode)
 *   mode 0: out [n, rows] = x [n, cols] · Wᵀ     (a linear layer's forward)
 *   mode 1: out [n, cols] = x [n, rows] · W      (its input gradient)
 */
static napi_value FrozenMatmul(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv, "lowrank_native.frozenMatmul takes (handle, heap, xOffset, n, outOffset, mode)")) return NULL;
  Frozen *w = get_frozen(env, argv[0]);
  if (w == NULL) return NULL;
  float *heap;
  size_t heap_length;
  int64_t x_off, n, out_off;
  int32_t mode;
  CHECK(float32_view(env, argv[1], &heap, &heap_length));
  CHECK(napi_get_value_int64(env, argv[2], &x_off));
  CHECK(napi_get_value_int64(env, argv[3], &n));
  CHECK(napi_get_value_int64(env, argv[4], &out_off));
  CHECK(napi_get_value_int32(env, argv[5], &mode));
  if (mode != 0 && mode != 1) {
    napi_throw_range_error(env, NULL, "lowrank_native.frozenMatmul: mode is 0 (x·Wᵀ) or 1 (x·W)");
    return NULL;
  }
  const int64_t rows = w->rows, cols = w->cols, in = mode == 0 ? cols : rows, out_width = mode == 0 ? rows : cols;
  if (!heap_range(env, heap_length, x_off, n * in, "the input") || !heap_range(env, heap_length, out_off, n * out_width, "the output")) return NULL;
  if (n == 0) return NULL;
  const float *x = heap + x_off;
  float *out = heap + out_off;
  if (w->kind == KIND_F32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, mode == 0 ? CblasTrans : CblasNoTrans, (int)n, (int)out_width, (int)in, 1.0f, x,
                (int)in, (const float *)w->data, (int)cols, 0.0f, out, (int)out_width);
    return NULL;
  }
  int64_t tile = tile_rows(w, TILE_BYTES);
  float *scratch = (float *)malloc((size_t)(tile * cols) * 4);
  if (scratch == NULL) {
    napi_throw_range_error(env, NULL, "lowrank_native.frozenMatmul: out of memory for a weight tile");
    return NULL;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    int64_t count = rows - r0 < tile ? rows - r0 : tile;
    const float *wt = rows_f32(w, r0, count, scratch);
    if (mode == 0) {
      /* out[:, r0:r0+count] = x · tileᵀ */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)count, (int)cols, 1.0f, x, (int)cols, wt, (int)cols, 0.0f,
                  out + r0, (int)rows);
    } else {
      /* out += x[:, r0:r0+count] · tile: the tiles split the inner dimension */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)cols, (int)count, 1.0f, x + r0, (int)rows, wt, (int)cols,
                  r0 == 0 ? 0.0f : 1.0f, out, (int)cols);
    }
  }
  free(scratch);
  return NULL;
}

/* frozenGather(handle, ids: Int32Array, heap: Float32Array, outOffset): out [ids, cols] = W[ids] */
static napi_value FrozenGather(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv, "lowrank_native.frozenGather takes (handle, ids, heap, outOffset)")) return NULL;
  Frozen *w = get_frozen(env, argv[0]);
  if (w == NULL) return NULL;
  int32_t *ids;
  size_t count, heap_length;
  float *heap;
  int64_t out_off;
  CHECK(int32_view(env, argv[1], &ids, &count));
  CHECK(float32_view(env, argv[2], &heap, &heap_length));
  CHECK(napi_get_value_int64(env, argv[3], &out_off));
  if (!heap_range(env, heap_length, out_off, (int64_t)count * w->cols, "the output")) return NULL;
  for (size_t i = 0; i < count; i++) {
    if (ids[i] < 0 || ids[i] >= w->rows) {
      napi_throw_range_error(env, NULL, "lowrank_native.frozenGather: a token id is outside the embedding");
      return NULL;
    }
  }
  for (size_t i = 0; i < count; i++) dequantize(w, (int64_t)ids[i] * w->cols, w->cols, heap + out_off + (int64_t)i * w->cols);
  return NULL;
}

/* ---- the tied (or frozen) lm_head fused with the cross-entropy ------------------------------- */

typedef struct {
  Frozen *w;
  const float *h; /* [n, cols] */
  int64_t n;
  int32_t *targets;
  float *weights, *lse;
  /* Rows with a nonzero weight (the rest take no loss and get no gradient), compacted into h_active. */
  int64_t active;
  int64_t *rows;
  float *h_active;
} LinearCe;

static int linear_ce_args(napi_env env, napi_value *argv, LinearCe *a) {
  float *heap;
  size_t heap_length, n_targets, n_weights, n_lse;
  int64_t h_off, n;
  memset(a, 0, sizeof *a);
  a->w = get_frozen(env, argv[0]);
  if (a->w == NULL) return 0;
  if (float32_view(env, argv[1], &heap, &heap_length) != napi_ok || napi_get_value_int64(env, argv[2], &h_off) != napi_ok ||
      napi_get_value_int64(env, argv[3], &n) != napi_ok || int32_view(env, argv[4], &a->targets, &n_targets) != napi_ok ||
      float32_view(env, argv[5], &a->weights, &n_weights) != napi_ok || float32_view(env, argv[6], &a->lse, &n_lse) != napi_ok) {
    napi_throw_type_error(env, NULL, "lowrank_native linear cross-entropy: expects (handle, heap, hOffset, n, Int32Array targets, "
                                     "Float32Array weights, Float32Array lse, ...)");
    return 0;
  }
  if ((int64_t)n_targets != n || (int64_t)n_weights != n || (int64_t)n_lse != n) {
    napi_throw_range_error(env, NULL, "lowrank_native linear cross-entropy: targets, weights and lse need one entry per row");
    return 0;
  }
  if (!heap_range(env, heap_length, h_off, n * a->w->cols, "the hidden states")) return 0;
  a->h = heap + h_off;
  a->n = n;
  for (int64_t i = 0; i < n; i++) {
    if (a->targets[i] < 0 || a->targets[i] >= a->w->rows) {
      napi_throw_range_error(env, NULL, "lowrank_native linear cross-entropy: a target id is outside the vocabulary");
      return 0;
    }
  }
  a->rows = (int64_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
  if (a->rows == NULL) goto out_of_memory;
  for (int64_t i = 0; i < n; i++) if (a->weights[i] != 0) a->rows[a->active++] = i;
  a->h_active = (float *)malloc((size_t)((a->active > 0 ? a->active : 1) * a->w->cols) * 4);
  if (a->h_active == NULL) goto out_of_memory;
  for (int64_t j = 0; j < a->active; j++) memcpy(a->h_active + j * a->w->cols, a->h + a->rows[j] * a->w->cols, (size_t)a->w->cols * 4);
  return 1;
out_of_memory:
  free(a->rows);
  napi_throw_range_error(env, NULL, "lowrank_native linear cross-entropy: out of memory");
  return 0;
}

static void linear_ce_free(LinearCe *a) {
  free(a->rows);
  free(a->h_active);
}

/* Vocabulary rows per tile: the weight tile and the [active, tile] logits both stay within their budgets. */
static int64_t vocab_tile(const LinearCe *a) {
  int64_t by_weight = tile_rows(a->w, TILE_BYTES);
  int64_t by_logits = (int64_t)LOGITS_TILE_BYTES / (4 * (a->active > 0 ? a->active : 1));
  int64_t t = by_weight < by_logits ? by_weight : by_logits;
  return t < 1 ? 1 : t;
}

/*
 * frozenLinearCrossEntropy(handle, heap, hOffset, n, targets, weights, lse, gradOffset) -> loss
 * logits z = h·Wᵀ by vocabulary tiles; lse_i = log Σ_j exp(z_ij) by an online log-sum-exp over the
 * tiles; loss = Σ_i w_i·(lse_i − z_i[t_i]). Rows with w_i = 0 are skipped (lse_i = 0).
 * With gradOffset >= 0 it also writes the gradient for dy = 1, dh_i = w_i·(Σ_j softmax(z_i)_j·W_j − W[t_i]),
 * in the same pass: the softmax-weighted sum of W's rows is accumulated unnormalised, rescaled
 * whenever a row's running max moves (as FlashAttention accumulates its output), and divided by the
 * final Σexp at the end. So training costs two products over W, as the unfused path does, and the
 * backward pass only scales this by dy.
 */
static napi_value FrozenLinearCrossEntropy(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  LinearCe a;
  if (!get_args(env, info, 8, argv, "lowrank_native.frozenLinearCrossEntropy takes 8 arguments")) return NULL;
  int64_t grad_off;
  float *heap;
  size_t heap_length;
  if (napi_get_value_int64(env, argv[7], &grad_off) != napi_ok || float32_view(env, argv[1], &heap, &heap_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "lowrank_native.frozenLinearCrossEntropy: gradOffset is an element offset, or -1 for none");
    return NULL;
  }
  if (!linear_ce_args(env, argv, &a)) return NULL;
  const int64_t V = a.w->rows, C = a.w->cols, m = a.active, tile = vocab_tile(&a);
  const int with_grad = grad_off >= 0;
  if (with_grad && !heap_range(env, heap_length, grad_off, a.n * C, "the gradient")) {
    linear_ce_free(&a);
    return NULL;
  }
  const size_t rows_alloc = (size_t)(m > 0 ? m : 1);
  double *run_max = (double *)malloc(rows_alloc * sizeof(double));
  double *run_sum = (double *)calloc(rows_alloc, sizeof(double));
  double *picked = (double *)calloc(rows_alloc, sizeof(double));
  float *acc = with_grad ? (float *)calloc(rows_alloc * (size_t)C, 4) : NULL;
  float *target_row = with_grad ? (float *)malloc((size_t)C * 4) : NULL;
  float *scratch = a.w->kind == KIND_F32 ? NULL : (float *)malloc((size_t)(tile * C) * 4);
  float *logits = (float *)malloc((size_t)(m * tile > 0 ? m * tile : 1) * 4);
  if (run_max == NULL || run_sum == NULL || picked == NULL || logits == NULL || (a.w->kind != KIND_F32 && scratch == NULL) ||
      (with_grad && (acc == NULL || target_row == NULL))) {
    free(run_max); free(run_sum); free(picked); free(acc); free(target_row); free(scratch); free(logits); linear_ce_free(&a);
    napi_throw_range_error(env, NULL, "lowrank_native.frozenLinearCrossEntropy: out of memory");
    return NULL;
  }
  for (int64_t j = 0; j < m; j++) run_max[j] = -INFINITY;
  for (int64_t v0 = 0; v0 < V && m > 0; v0 += tile) {
    int64_t count = V - v0 < tile ? V - v0 : tile;
    const float *wt = rows_f32(a.w, v0, count, scratch);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)count, (int)C, 1.0f, a.h_active, (int)C, wt, (int)C, 0.0f,
                logits, (int)count);
    for (int64_t j = 0; j < m; j++) {
      float *z = logits + j * count;
      int32_t t = a.targets[a.rows[j]];
      if (t >= v0 && t < v0 + count) picked[j] = z[t - v0];
      double tile_max = row_max(z, (int32_t)count);
      /* A NaN tile maximum (a NaN logit, row_max) carries into the row's log-sum-exp: the loss is NaN. */
      double new_max = tile_max != tile_max || tile_max > run_max[j] ? tile_max : run_max[j];
      double rescale = exp(run_max[j] - new_max);
      double tile_sum;
      if (with_grad) {
        /* z becomes exp(z − max): the weights of W's rows in this tile's share of the sum. */
        row_softmax_scaled(z, z, (int32_t)count, (float)new_max, 1.0f);
        tile_sum = 0;
        for (int64_t c = 0; c < count; c++) tile_sum += z[c];
        if (rescale != 1.0) {
          float r = (float)rescale;
          for (int64_t c = 0; c < C; c++) acc[j * C + c] *= r;
        }
      } else {
        tile_sum = row_sum_exp(z, (int32_t)count, (float)new_max);
      }
      run_sum[j] = run_sum[j] * rescale + tile_sum;
      run_max[j] = new_max;
    }
    if (with_grad) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)C, (int)count, 1.0f, logits, (int)count, wt, (int)C, 1.0f,
                  acc, (int)C);
    }
  }
  double loss = 0;
  for (int64_t i = 0; i < a.n; i++) a.lse[i] = 0;
  float *grad = with_grad ? heap + grad_off : NULL;
  if (with_grad) memset(grad, 0, (size_t)(a.n * C) * 4);
  for (int64_t j = 0; j < m; j++) {
    int64_t i = a.rows[j];
    double l = run_max[j] + log(run_sum[j]);
    a.lse[i] = (float)l;
    loss += (double)a.weights[i] * (l - picked[j]);
    if (with_grad) {
      float w = a.weights[i], inverse = (float)(1.0 / run_sum[j]);
      dequantize(a.w, (int64_t)a.targets[i] * C, C, target_row);
      for (int64_t c = 0; c < C; c++) grad[i * C + c] = w * (acc[j * C + c] * inverse - target_row[c]);
    }
  }
  free(run_max); free(run_sum); free(picked); free(acc); free(target_row); free(scratch); free(logits); linear_ce_free(&a);
  napi_value result;
  CHECK(napi_create_double(env, loss, &result));
  return result;
}

/*
 * frozenLinearCrossEntropyGrad(handle, heap, hOffset, n, targets, weights, lse, dy, dhOffset)
 * dh [n, cols] = Σ over tiles of P·W_tile, P_ij = (exp(z_ij − lse_i) − [j = t_i])·w_i·dy (logits recomputed);
 * rows with w_i = 0 get 0.
 */
static napi_value FrozenLinearCrossEntropyGrad(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  LinearCe a;
  if (!get_args(env, info, 9, argv, "lowrank_native.frozenLinearCrossEntropyGrad takes 9 arguments")) return NULL;
  double dy;
  int64_t dh_off;
  float *heap;
  size_t heap_length;
  if (napi_get_value_double(env, argv[7], &dy) != napi_ok || napi_get_value_int64(env, argv[8], &dh_off) != napi_ok ||
      float32_view(env, argv[1], &heap, &heap_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "lowrank_native.frozenLinearCrossEntropyGrad: dy is a number and dhOffset an offset");
    return NULL;
  }
  if (!linear_ce_args(env, argv, &a)) return NULL;
  const int64_t V = a.w->rows, C = a.w->cols, m = a.active, tile = vocab_tile(&a);
  if (!heap_range(env, heap_length, dh_off, a.n * C, "the gradient")) {
    linear_ce_free(&a);
    return NULL;
  }
  float *dh = heap + dh_off;
  float *dh_active = (float *)calloc((size_t)(m * C > 0 ? m * C : 1), 4);
  float *scratch = a.w->kind == KIND_F32 ? NULL : (float *)malloc((size_t)(tile * C) * 4);
  float *logits = (float *)malloc((size_t)(m * tile > 0 ? m * tile : 1) * 4);
  if (dh_active == NULL || logits == NULL || (a.w->kind != KIND_F32 && scratch == NULL)) {
    free(dh_active); free(scratch); free(logits); linear_ce_free(&a);
    napi_throw_range_error(env, NULL, "lowrank_native.frozenLinearCrossEntropyGrad: out of memory");
    return NULL;
  }
  for (int64_t v0 = 0; v0 < V && m > 0; v0 += tile) {
    int64_t count = V - v0 < tile ? V - v0 : tile;
    const float *wt = rows_f32(a.w, v0, count, scratch);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)count, (int)C, 1.0f, a.h_active, (int)C, wt, (int)C, 0.0f,
                logits, (int)count);
    for (int64_t j = 0; j < m; j++) {
      int64_t i = a.rows[j];
      float scale = (float)(a.weights[i] * dy);
      float *z = logits + j * count;
      row_softmax_scaled(z, z, (int32_t)count, a.lse[i], scale);
      int32_t t = a.targets[i];
      if (t >= v0 && t < v0 + count) z[t - v0] -= scale;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)C, (int)count, 1.0f, logits, (int)count, wt, (int)C, 1.0f,
                dh_active, (int)C);
  }
  memset(dh, 0, (size_t)(a.n * C) * 4);
  for (int64_t j = 0; j < m; j++) memcpy(dh + a.rows[j] * C, dh_active + j * C, (size_t)C * 4);
  free(dh_active); free(scratch); free(logits); linear_ce_free(&a);
  return NULL;
}

/* Adds the frozen-weight functions to the addon's exports (called from kernels.c's Init). */
napi_status register_frozen(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"frozenCreate", NULL, FrozenCreate, NULL, NULL, NULL, napi_default, NULL},
      {"frozenFree", NULL, FrozenFree, NULL, NULL, NULL, napi_default, NULL},
      {"frozenInfo", NULL, FrozenInfo, NULL, NULL, NULL, napi_default, NULL},
      {"frozenRows", NULL, FrozenRows, NULL, NULL, NULL, napi_default, NULL},
      {"frozenMatmul", NULL, FrozenMatmul, NULL, NULL, NULL, napi_default, NULL},
      {"frozenGather", NULL, FrozenGather, NULL, NULL, NULL, napi_default, NULL},
      {"frozenLinearCrossEntropy", NULL, FrozenLinearCrossEntropy, NULL, NULL, NULL, napi_default, NULL},
      {"frozenLinearCrossEntropyGrad", NULL, FrozenLinearCrossEntropyGrad, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
