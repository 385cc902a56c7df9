/*
 * lowrank_gemm: single-precision GEMM from a system BLAS (OpenBLAS on Linux, Accelerate on macOS)
 * for the wasm backend's matmul kernels (core/backend/native/gemm.ts, PERFORMANCE.md §2-§3).
 *
 * The operands live in the wasm heap: JS passes a Float32Array over the whole heap and element
 * offsets into it, and BLAS reads and writes that memory in place (zero-copy; this also works on
 * the SharedArrayBuffer heap of the threaded wasm build). Every offset and extent is checked
 * against the view's length here, so a wrong offset is a thrown JS error, never a stray write.
 *
 * Built by scripts/build-native.js at install, with plain cc against Node's own headers (no
 * node-gyp, no download). Node-API is ABI-stable, so the same file loads in Electron.
 */
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#ifdef __APPLE__
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif

#define CHECK(call)                                                                   \
  do {                                                                                \
    if ((call) != napi_ok) {                                                          \
      napi_throw_error(env, NULL, "lowrank_gemm: bad arguments (" #call ")");         \
      return NULL;                                                                    \
    }                                                                                 \
  } while (0)

static napi_value throw_range(napi_env env, const char *what) {
  char message[160];
  snprintf(message, sizeof message, "lowrank_gemm: %s lies outside the heap view", what);
  napi_throw_range_error(env, NULL, message);
  return NULL;
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
 * sgemmBatch(heap: Float32Array, dims: Int32Array [transA, transB, m, n, k, lda, ldb, ldc],
 *            aOffsets: Uint32Array, bOffsets: Uint32Array, cOffsets: Uint32Array, beta: number)
 * For each i: C_i = op(A_i) · op(B_i) + beta · C_i, row-major, offsets in elements of `heap`.
 */
static napi_value SgemmBatch(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 6) {
    napi_throw_type_error(env, NULL, "lowrank_gemm.sgemmBatch takes 6 arguments");
    return NULL;
  }
  float *heap;
  size_t heap_length;
  CHECK(float32_view(env, argv[0], &heap, &heap_length));
  napi_typedarray_type dims_type;
  size_t dims_length;
  void *dims_raw;
  CHECK(napi_get_typedarray_info(env, argv[1], &dims_type, &dims_length, &dims_raw, NULL, NULL));
  if (dims_type != napi_int32_array || dims_length != 8) {
    napi_throw_type_error(env, NULL, "lowrank_gemm.sgemmBatch: dims must be an Int32Array of 8");
    return NULL;
  }
  const int32_t *dims = (const int32_t *)dims_raw;
  int trans_a = dims[0] != 0, trans_b = dims[1] != 0;
  int32_t m = dims[2], n = dims[3], k = dims[4], lda = dims[5], ldb = dims[6], ldc = dims[7];
  if (m < 0 || n < 0 || k < 0 || lda < 1 || ldb < 1 || ldc < 1) {
    napi_throw_range_error(env, NULL, "lowrank_gemm.sgemmBatch: negative size or leading dimension < 1");
    return NULL;
  }
  uint32_t *a_off, *b_off, *c_off;
  size_t count, count_b, count_c;
  CHECK(uint32_view(env, argv[2], &a_off, &count));
  CHECK(uint32_view(env, argv[3], &b_off, &count_b));
  CHECK(uint32_view(env, argv[4], &c_off, &count_c));
  if (count_b != count || count_c != count) {
    napi_throw_range_error(env, NULL, "lowrank_gemm.sgemmBatch: offset arrays differ in length");
    return NULL;
  }
  double beta;
  CHECK(napi_get_value_double(env, argv[5], &beta));

  int64_t a_extent = extent(trans_a, m, k, lda);
  int64_t b_extent = extent(trans_b, k, n, ldb);
  int64_t c_extent = extent(0, m, n, ldc);
  for (size_t i = 0; i < count; i++) {
    if ((int64_t)a_off[i] + a_extent > (int64_t)heap_length) return throw_range(env, "an A operand");
    if ((int64_t)b_off[i] + b_extent > (int64_t)heap_length) return throw_range(env, "a B operand");
    if ((int64_t)c_off[i] + c_extent > (int64_t)heap_length) return throw_range(env, "an output");
  }
  for (size_t i = 0; i < count; i++) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                m, n, k, 1.0f, heap + a_off[i], lda, heap + b_off[i], ldb, (float)beta, heap + c_off[i], ldc);
  }
  return NULL;
}

#ifdef __APPLE__
static void set_threads(int n) { (void)n; }
static int get_threads(void) { return 0; }
static const char *config(void) { return "Accelerate"; }
#else
/* OpenBLAS-specific; declared here so the file also builds against a header that lacks them. */
extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);
static void set_threads(int n) { openblas_set_num_threads(n); }
static int get_threads(void) { return openblas_get_num_threads(); }
static const char *config(void) {
  static char text[256];
  snprintf(text, sizeof text, "%s, %s kernels", openblas_get_config(), openblas_get_corename());
  return text;
}
#endif

static napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t n = 0;
  if (argc != 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    napi_throw_range_error(env, NULL, "lowrank_gemm.setThreads takes a thread count >= 1");
    return NULL;
  }
  set_threads(n);
  return NULL;
}

static napi_value Threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  CHECK(napi_create_int32(env, get_threads(), &result));
  return result;
}

static napi_value Library(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  CHECK(napi_create_string_utf8(env, config(), NAPI_AUTO_LENGTH, &result));
  return result;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sgemmBatch", NULL, SgemmBatch, NULL, NULL, NULL, napi_default, NULL},
      {"setThreads", NULL, SetThreads, NULL, NULL, NULL, napi_default, NULL},
      {"threads", NULL, Threads, NULL, NULL, NULL, napi_default, NULL},
      {"library", NULL, Library, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(lowrank_gemm, Init)
