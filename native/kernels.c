/*
 * lowrank_native: the wasm backend's optional native kernels (core/backend/native/addon.ts,
 * PERFORMANCE.md §2-§3): single-precision GEMM from a system BLAS (OpenBLAS on Linux, Accelerate
 * on macOS) for the matmul kernels, and a fused softmax cross-entropy (forward and gradient) for
 * the causal-LM loss, the largest non-matmul cost of a training step.
 *
 * The operands live in the wasm heap: JS passes a Float32Array over the whole heap and element
 * offsets into it, and BLAS reads and writes that memory in place (zero-copy; this also works on
 * the SharedArrayBuffer heap of the threaded wasm build). Every offset and extent is checked
 * against the view's length here, so a wrong offset is a thrown JS error, never a stray write.
 *
 * Built by scripts/build-native.js at install, with plain cc against Node's own headers (no
 * node-gyp, no download). Node-API is ABI-stable, so the same file loads in Electron.
 */
#include "common.h"
#include <stdlib.h>

/* Multiply-adds below which a product runs on one BLAS thread (SgemmBatch). */
#define SMALL_GEMM_WORK ((int64_t)1 << 23)
/* The thread count setThreads asked for (0 until it is called: BLAS's own default). */
static int configured_threads = 0;
static void set_threads(int n);

/* frozen.c: frozen weights in native memory and the products that read them. */
napi_status register_frozen(napi_env env, napi_value exports);
napi_status register_quants(napi_env env, napi_value exports);

/*
 * sgemmBatch(heap: Float32Array, dims: Int32Array [transA, transB, m, n, k, lda, ldb, ldc],
 *            aOffsets: Uint32Array, bOffsets: Uint32Array, cOffsets: Uint32Array, beta: number)
 * For each i: C_i = op(A_i) · op(B_i) + beta · C_i, row-major, offsets in elements of `heap`.
 */
static napi_value SgemmBatch(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv, "lowrank_native.sgemmBatch takes 6 arguments")) return NULL;
  float *heap;
  size_t heap_length;
  CHECK(float32_view(env, argv[0], &heap, &heap_length));
  napi_typedarray_type dims_type;
  size_t dims_length;
  void *dims_raw;
  CHECK(napi_get_typedarray_info(env, argv[1], &dims_type, &dims_length, &dims_raw, NULL, NULL));
  if (dims_type != napi_int32_array || dims_length != 8) {
    napi_throw_type_error(env, NULL, "lowrank_native.sgemmBatch: dims must be an Int32Array of 8");
    return NULL;
  }
  const int32_t *dims = (const int32_t *)dims_raw;
  int trans_a = dims[0] != 0, trans_b = dims[1] != 0;
  int32_t m = dims[2], n = dims[3], k = dims[4], lda = dims[5], ldb = dims[6], ldc = dims[7];
  if (m < 0 || n < 0 || k < 0 || lda < 1 || ldb < 1 || ldc < 1) {
    napi_throw_range_error(env, NULL, "lowrank_native.sgemmBatch: negative size or leading dimension < 1");
    return NULL;
  }
  uint32_t *a_off, *b_off, *c_off;
  size_t count, count_b, count_c;
  CHECK(uint32_view(env, argv[2], &a_off, &count));
  CHECK(uint32_view(env, argv[3], &b_off, &count_b));
  CHECK(uint32_view(env, argv[4], &c_off, &count_c));
  if (count_b != count || count_c != count) {
    napi_throw_range_error(env, NULL, "lowrank_native.sgemmBatch: offset arrays differ in length");
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
  /* A small product (a LoRA factor's, one attention head's) runs faster on one thread than split
     across two: measured 2-2.5x for 1024x8x256 on the build machine, where the threads' hand-off costs
     more than the arithmetic. */
  int one_thread = configured_threads > 1 && (int64_t)m * n * k < SMALL_GEMM_WORK;
  if (one_thread) set_threads(1);
  for (size_t i = 0; i < count; i++) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                m, n, k, 1.0f, heap + a_off[i], lda, heap + b_off[i], ldb, (float)beta, heap + c_off[i], ldc);
  }
  if (one_thread) set_threads(configured_threads);
  return NULL;
}


/* ---- fused softmax cross-entropy ---------------------------------------------------------- */

/* The operands of both cross-entropy calls, checked against each other. */
typedef struct {
  float *logits, *weights, *lse, *grad;
  int32_t *targets;
  int64_t rows, vocab;
} CrossEntropyArgs;

/*
 * argv: logits Float32Array [rows·vocab], targets Int32Array [rows], weights Float32Array [rows],
 * lse Float32Array [rows] (+ grad Float32Array [rows·vocab]). Typed arrays may be views of the
 * wasm heap: their pointers are used in place.
 */
static int cross_entropy_args(napi_env env, napi_value *argv, int with_grad, CrossEntropyArgs *a) {
  size_t n_logits, n_targets, n_weights, n_lse, n_grad = 0;
  if (float32_view(env, argv[0], &a->logits, &n_logits) != napi_ok ||
      int32_view(env, argv[1], &a->targets, &n_targets) != napi_ok ||
      float32_view(env, argv[2], &a->weights, &n_weights) != napi_ok ||
      float32_view(env, argv[3], &a->lse, &n_lse) != napi_ok ||
      (with_grad && float32_view(env, argv[4], &a->grad, &n_grad) != napi_ok)) {
    napi_throw_type_error(env, NULL, "lowrank_native cross-entropy: expects Float32Array logits, Int32Array targets, "
                                     "Float32Array weights and lse (and grad)");
    return 0;
  }
  if (n_targets == 0 || n_logits % n_targets != 0 || n_logits == 0 || n_weights != n_targets || n_lse != n_targets ||
      (with_grad && n_grad != n_logits)) {
    napi_throw_range_error(env, NULL, "lowrank_native cross-entropy: logits must be [rows, vocab] with rows = "
                                      "targets = weights = lse (and grad the size of logits)");
    return 0;
  }
  a->rows = (int64_t)n_targets;
  a->vocab = (int64_t)(n_logits / n_targets);
  for (int64_t i = 0; i < a->rows; i++) {
    if (a->targets[i] < 0 || a->targets[i] >= a->vocab) {
      napi_throw_range_error(env, NULL, "lowrank_native cross-entropy: a target id is outside the vocabulary");
      return 0;
    }
  }
  return 1;
}

/*
 * crossEntropy(logits, targets, weights, lse) -> loss
 * For each row i: lse_i = log Σ_j exp(z_ij) (written to lse); loss = Σ_i w_i·(lse_i − z_i[t_i]),
 * accumulated in double.
 */
static napi_value CrossEntropy(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  CrossEntropyArgs a;
  if (!get_args(env, info, 4, argv, "lowrank_native.crossEntropy takes 4 arguments")) return NULL;
  if (!cross_entropy_args(env, argv, 0, &a)) return NULL;
  double loss = 0;
  for (int64_t i = 0; i < a.rows; i++) {
    const float *row = a.logits + i * a.vocab;
    float m = row_max(row, (int32_t)a.vocab);
    float l = m + logf(row_sum_exp(row, (int32_t)a.vocab, m));
    a.lse[i] = l;
    loss += (double)a.weights[i] * ((double)l - (double)row[a.targets[i]]);
  }
  napi_value result;
  CHECK(napi_create_double(env, loss, &result));
  return result;
}

/*
 * crossEntropyGrad(logits, targets, weights, lse, grad, dy)
 * grad_ij = (exp(z_ij − lse_i) − [j = t_i]) · w_i · dy
 */
static napi_value CrossEntropyGrad(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  CrossEntropyArgs a;
  if (!get_args(env, info, 6, argv, "lowrank_native.crossEntropyGrad takes 6 arguments")) return NULL;
  if (!cross_entropy_args(env, argv, 1, &a)) return NULL;
  double dy;
  CHECK(napi_get_value_double(env, argv[5], &dy));
  for (int64_t i = 0; i < a.rows; i++) {
    float scale = (float)(a.weights[i] * dy);
    float *out = a.grad + i * a.vocab;
    row_softmax_scaled(a.logits + i * a.vocab, out, (int32_t)a.vocab, a.lse[i], scale);
    out[a.targets[i]] -= scale;
  }
  return NULL;
}


/* ---- SwiGLU: silu(gate)·up ------------------------------------------------------------------ */

/* Logistic sigmoid for any sign, branch-free: with e = exp(−|g|) <= 1, σ = (g >= 0 ? 1 : e)/(1 + e). */
static inline v8f sigmoid8(v8f g) {
  v8f magnitude = (v8f)((v8i)g & 0x7fffffff);
  v8f e = exp_nonpositive(-magnitude);
  return vselect(g >= splat(0), splat(1), e) / (splat(1) + e);
}

HOT static void swiglu_forward(const float *gate, const float *up, float *out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f g = load8(gate + i);
    store8(out + i, g * sigmoid8(g) * load8(up + i));
  }
  if (i < n) {
    v8f g = load_tail(gate + i, (int32_t)(n - i), 0), r = g * sigmoid8(g) * load_tail(up + i, (int32_t)(n - i), 0);
    for (int64_t l = 0; l < n - i; l++) out[i + l] = r[l];
  }
}

/* d gate = dy·up·σ(g)·(1 + g·(1 − σ(g))) */
HOT static void swiglu_grad_gate(const float *gate, const float *up, const float *dy, float *out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f g = load8(gate + i), s = sigmoid8(g);
    store8(out + i, load8(dy + i) * load8(up + i) * s * (splat(1) + g * (splat(1) - s)));
  }
  if (i < n) {
    int32_t rest = (int32_t)(n - i);
    v8f g = load_tail(gate + i, rest, 0), s = sigmoid8(g);
    v8f r = load_tail(dy + i, rest, 0) * load_tail(up + i, rest, 0) * s * (splat(1) + g * (splat(1) - s));
    for (int32_t l = 0; l < rest; l++) out[i + l] = r[l];
  }
}

/* d up = dy·silu(g): the forward with dy in place of up. */
static void swiglu_grad_up(const float *gate, const float *dy, float *out, int64_t n) { swiglu_forward(gate, dy, out, n); }

/* Float32Array arguments argv[0..count-1], all of one length; returns it, or -1 after throwing. */
static int64_t same_length_views(napi_env env, napi_value *argv, size_t count, float **views, const char *name) {
  size_t length = 0;
  for (size_t i = 0; i < count; i++) {
    size_t n;
    if (float32_view(env, argv[i], &views[i], &n) != napi_ok) {
      char message[120];
      snprintf(message, sizeof message, "lowrank_native.%s takes Float32Arrays", name);
      napi_throw_type_error(env, NULL, message);
      return -1;
    }
    if (i > 0 && n != length) {
      char message[120];
      snprintf(message, sizeof message, "lowrank_native.%s: the arrays differ in length", name);
      napi_throw_range_error(env, NULL, message);
      return -1;
    }
    length = n;
  }
  return (int64_t)length;
}

/* swiglu(gate, up, out): out = silu(gate)·up */
static napi_value SwiGlu(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  float *v[3];
  if (!get_args(env, info, 3, argv, "lowrank_native.swiglu takes 3 arguments")) return NULL;
  int64_t n = same_length_views(env, argv, 3, v, "swiglu");
  if (n < 0) return NULL;
  swiglu_forward(v[0], v[1], v[2], n);
  return NULL;
}

/* swigluGrad(gate, up, dy, out, wrt): out = d gate (wrt 0) or d up (wrt 1) */
static napi_value SwiGluGrad(napi_env env, napi_callback_info info) {
  static const char usage[] = "lowrank_native.swigluGrad takes (gate, up, dy, out, 0 for d gate | 1 for d up)";
  napi_value argv[5];
  float *v[4];
  int32_t wrt = -1;
  if (!get_args(env, info, 5, argv, usage)) return NULL;
  if (napi_get_value_int32(env, argv[4], &wrt) != napi_ok || (wrt != 0 && wrt != 1)) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  int64_t n = same_length_views(env, argv, 4, v, "swigluGrad");
  if (n < 0) return NULL;
  if (wrt == 0) swiglu_grad_gate(v[0], v[1], v[2], v[3], n);
  else swiglu_grad_up(v[0], v[2], v[3], n);
  return NULL;
}


/* ---- AdamW step ------------------------------------------------------------------------------ */

/*
 * One AdamW step over a parameter, in the same float32 order as core/optim/adamw.ts's tfjs ops:
 *   m' = m·β1 + g·(1−β1);  v' = v·β2 + g²·(1−β2)
 *   p' = p·decay − ((m'/c1) / (√(v'/c2) + ε))·rate
 * A plain loop: GCC vectorises it (sqrt needs -fno-math-errno, which the build passes).
 */
HOT static void adamw_update(const float *restrict p, const float *restrict g, const float *restrict m,
                             const float *restrict v, float *restrict p_out, float *restrict m_out, float *restrict v_out,
                             int64_t n, const float *k) {
  const float b1 = k[0], one_minus_b1 = k[1], b2 = k[2], one_minus_b2 = k[3], eps = k[4], rate = k[5], decay = k[6],
              c1 = k[7], c2 = k[8];
  for (int64_t i = 0; i < n; i++) {
    float m1 = m[i] * b1 + g[i] * one_minus_b1;
    float v1 = v[i] * b2 + (g[i] * g[i]) * one_minus_b2;
    m_out[i] = m1;
    v_out[i] = v1;
    p_out[i] = p[i] * decay - ((m1 / c1) / (sqrtf(v1 / c2) + eps)) * rate;
  }
}

/*
 * adamw(p, g, m, v, pOut, mOut, vOut, Float32Array [β1, 1−β1, β2, 1−β2, ε, rate, decay, c1, c2])
 * (the constants as float32, exactly as tfjs casts its scalars)
 */
static napi_value AdamW(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  if (!get_args(env, info, 8, argv, "lowrank_native.adamw takes (p, g, m, v, pOut, mOut, vOut, constants)")) return NULL;
  float *v[7];
  int64_t n = same_length_views(env, argv, 7, v, "adamw");
  if (n < 0) return NULL;
  float *k;
  size_t nk;
  if (float32_view(env, argv[7], &k, &nk) != napi_ok || nk != 9) {
    napi_throw_type_error(env, NULL, "lowrank_native.adamw: constants must be a Float32Array of 9");
    return NULL;
  }
  adamw_update(v[0], v[1], v[2], v[3], v[4], v[5], v[6], n, k);
  return NULL;
}

/* ---- RMSNorm: y = x·r·w, r = 1/√(mean(x²) + eps) per row ------------------------------------- */

/* Σ x² and, with g given, Σ g·x over one row: 8 lanes in float, totalled in double. */
HOT static void row_sums(const float *x, const float *dy, const float *w, int64_t C, double *ss, double *dot) {
  v8f s = splat(0), d = splat(0);
  int64_t j = 0;
  for (; j + 8 <= C; j += 8) {
    v8f xv = load8(x + j);
    s += xv * xv;
    if (dy) d += load8(dy + j) * load8(w + j) * xv;
  }
  double st = horizontal_sum(s), dt = dy ? horizontal_sum(d) : 0;
  for (; j < C; j++) {
    st += (double)x[j] * x[j];
    if (dy) dt += (double)dy[j] * w[j] * x[j];
  }
  *ss = st;
  *dot = dt;
}

/* Rows of x [rows, C] from the arrays' lengths; -1 after throwing. */
static int64_t norm_rows(napi_env env, size_t length, int64_t C) {
  if (C < 1 || length % (size_t)C != 0) {
    napi_throw_range_error(env, NULL, "lowrank_native rmsnorm: the arrays are not whole rows of the weight's width");
    return -1;
  }
  return (int64_t)(length / (size_t)C);
}

/* rmsnorm(x, w, out, eps): out = x·r·w */
HOT static void rmsnorm_forward(const float *x, const float *w, float *out, int64_t rows, int64_t C, float eps) {
  for (int64_t i = 0; i < rows; i++) {
    const float *xr = x + i * C;
    float *yr = out + i * C;
    double ss, unused;
    row_sums(xr, NULL, NULL, C, &ss, &unused);
    float r = (float)(1.0 / sqrt(ss / (double)C + eps));
    int64_t j = 0;
    for (; j + 8 <= C; j += 8) store8(yr + j, load8(xr + j) * splat(r) * load8(w + j));
    for (; j < C; j++) yr[j] = xr[j] * r * w[j];
  }
}

/* dx = r·(g − x·r²·mean(g·x)), g = dy·w */
HOT static void rmsnorm_grad_x(const float *dy, const float *x, const float *w, float *dx, int64_t rows, int64_t C, float eps) {
  for (int64_t i = 0; i < rows; i++) {
    const float *xr = x + i * C, *dyr = dy + i * C;
    float *out = dx + i * C;
    double ss, dot;
    row_sums(xr, dyr, w, C, &ss, &dot);
    double rd = 1.0 / sqrt(ss / (double)C + eps);
    float r = (float)rd, c = (float)(rd * rd * dot / (double)C);
    int64_t j = 0;
    for (; j + 8 <= C; j += 8) store8(out + j, splat(r) * (load8(dyr + j) * load8(w + j) - load8(xr + j) * splat(c)));
    for (; j < C; j++) out[j] = r * (dyr[j] * w[j] - xr[j] * c);
  }
}

/* dw = Σ_rows dy·x·r, summed in double */
static void rmsnorm_grad_w(const float *dy, const float *x, double *sum, int64_t rows, int64_t C, float eps) {
  for (int64_t i = 0; i < rows; i++) {
    const float *xr = x + i * C, *dyr = dy + i * C;
    double ss, unused;
    row_sums(xr, NULL, NULL, C, &ss, &unused);
    double r = 1.0 / sqrt(ss / (double)C + eps);
    for (int64_t j = 0; j < C; j++) sum[j] += (double)dyr[j] * xr[j] * r;
  }
}

/* rmsNorm(x, w, out, eps) | rmsNormGradX(dy, x, w, dx, eps) | rmsNormGradW(dy, x, dw, eps): Float32Arrays, x [rows, C], w [C] */
static napi_value RmsNorm(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  float *v[3];
  double eps;
  size_t nx, nw, no;
  if (!get_args(env, info, 4, argv, "lowrank_native.rmsNorm takes (x, w, out, eps)")) return NULL;
  CHECK(float32_view(env, argv[0], &v[0], &nx));
  CHECK(float32_view(env, argv[1], &v[1], &nw));
  CHECK(float32_view(env, argv[2], &v[2], &no));
  CHECK(napi_get_value_double(env, argv[3], &eps));
  int64_t rows = norm_rows(env, nx, (int64_t)nw);
  if (rows < 0) return NULL;
  if (no != nx) return throw_range(env, "rmsNorm's output");
  rmsnorm_forward(v[0], v[1], v[2], rows, (int64_t)nw, (float)eps);
  return NULL;
}

static napi_value RmsNormGradX(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  float *v[4];
  size_t n[4];
  double eps;
  if (!get_args(env, info, 5, argv, "lowrank_native.rmsNormGradX takes (dy, x, w, dx, eps)")) return NULL;
  for (int k = 0; k < 4; k++) CHECK(float32_view(env, argv[k], &v[k], &n[k]));
  CHECK(napi_get_value_double(env, argv[4], &eps));
  int64_t rows = norm_rows(env, n[1], (int64_t)n[2]);
  if (rows < 0) return NULL;
  if (n[0] != n[1] || n[3] != n[1]) return throw_range(env, "rmsNormGradX's dy or dx");
  rmsnorm_grad_x(v[0], v[1], v[2], v[3], rows, (int64_t)n[2], (float)eps);
  return NULL;
}

static napi_value RmsNormGradW(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  float *v[3];
  size_t n[3];
  double eps;
  if (!get_args(env, info, 4, argv, "lowrank_native.rmsNormGradW takes (dy, x, dw, eps)")) return NULL;
  for (int k = 0; k < 3; k++) CHECK(float32_view(env, argv[k], &v[k], &n[k]));
  CHECK(napi_get_value_double(env, argv[3], &eps));
  int64_t rows = norm_rows(env, n[1], (int64_t)n[2]);
  if (rows < 0) return NULL;
  if (n[0] != n[1]) return throw_range(env, "rmsNormGradW's dy");
  double *sum = (double *)calloc(n[2] > 0 ? n[2] : 1, sizeof(double));
  if (sum == NULL) return throw_range(env, "rmsNormGradW's scratch (out of memory)");
  rmsnorm_grad_w(v[0], v[1], sum, rows, (int64_t)n[2], (float)eps);
  for (size_t j = 0; j < n[2]; j++) v[2][j] = (float)sum[j];
  free(sum);
  return NULL;
}

/* ---- attention softmax: probs = softmax(scale·s + bias) by rows, and its gradient ------------- */

/*
 * scores [B, H, T, S] as rows of S keys; bias [Bb, T, S] with Bb = 1 (shared) or B (per sequence):
 * the additive causal/padding mask the attention layer built once for all its heads. One pass
 * writes z = scale·s + bias and its maximum, one writes exp(z − max) and their sum, one divides.
 * A masked key's z is −1e9 and exp_nonpositive clamps it to ~1e-38 where tf.softmax has 0: a
 * difference no float32 sum that holds the row maximum's 1 can see.
 */
HOT static void masked_softmax(const float *scores, const float *bias, float *out, int64_t B, int64_t H, int64_t T,
                               int64_t S, int per_sequence_bias, float scale) {
  v8f k = splat(scale);
  for (int64_t b = 0; b < B; b++) {
    const float *bias_b = bias + (per_sequence_bias ? b : 0) * T * S;
    for (int64_t h = 0; h < H; h++) {
      for (int64_t t = 0; t < T; t++) {
        const float *sr = scores + ((b * H + h) * T + t) * S, *br = bias_b + t * S;
        float *o = out + ((b * H + h) * T + t) * S;
        v8f m8 = splat(-INFINITY);
        v8i nan8 = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t j = 0;
        for (; j + 8 <= S; j += 8) {
          v8f z = load8(sr + j) * k + load8(br + j);
          store8(o + j, z);
          m8 = vmax(z, m8);
          nan8 |= z != z;
        }
        float m = -INFINITY;
        int nan = 0;
        for (int l = 0; l < 8; l++) {
          m = m8[l] > m ? m8[l] : m;
          nan |= nan8[l] != 0;
        }
        for (; j < S; j++) {
          o[j] = sr[j] * scale + br[j];
          m = o[j] > m ? o[j] : m;
          nan |= o[j] != o[j];
        }
        /* A NaN score or an infinite maximum gives a NaN row, as tf.softmax does: exp_nonpositive's
           clamp would otherwise turn them into finite values and hide a diverging run. */
        if (nan || isinf(m)) {
          for (j = 0; j < S; j++) o[j] = NAN;
          continue;
        }
        /* exp(z − max) in place and its sum in one pass, then the division as a product. */
        v8f shift = splat(m), sum8 = splat(0);
        for (j = 0; j + 8 <= S; j += 8) {
          v8f e = exp_nonpositive(load8(o + j) - shift);
          store8(o + j, e);
          sum8 += e;
        }
        float sum = horizontal_sum(sum8);
        if (j < S) {
          v8f e = exp_nonpositive(load_tail(o + j, (int32_t)(S - j), m) - shift);
          for (int64_t l = 0; l < S - j; l++) {
            o[j + l] = e[l];
            sum += e[l];
          }
        }
        v8f inverse = splat(1.0f / sum);
        for (j = 0; j + 8 <= S; j += 8) store8(o + j, load8(o + j) * inverse);
        for (; j < S; j++) o[j] *= inverse[0];
      }
    }
  }
}

/* ds = scale·y·(dy − Σ dy·y) by rows of S (the softmax's Jacobian-vector product, then the scale's). */
HOT static void masked_softmax_grad(const float *y, const float *dy, float *out, int64_t rows, int64_t S, float scale) {
  for (int64_t r = 0; r < rows; r++) {
    const float *yr = y + r * S, *gr = dy + r * S;
    float *o = out + r * S;
    v8f d8 = splat(0);
    int64_t j = 0;
    for (; j + 8 <= S; j += 8) d8 += load8(yr + j) * load8(gr + j);
    double dot = horizontal_sum(d8);
    for (; j < S; j++) dot += (double)yr[j] * gr[j];
    v8f d = splat((float)dot), k = splat(scale);
    for (j = 0; j + 8 <= S; j += 8) store8(o + j, k * load8(yr + j) * (load8(gr + j) - d));
    for (; j < S; j++) o[j] = scale * yr[j] * (gr[j] - (float)dot);
  }
}

/* maskedSoftmax(scores, bias, out, B, H, T, S, scale): Float32Arrays as above. */
static napi_value MaskedSoftmax(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  float *v[3];
  size_t n[3];
  int64_t dims[4];
  double scale;
  if (!get_args(env, info, 8, argv, "lowrank_native.maskedSoftmax takes (scores, bias, out, B, H, T, S, scale)")) return NULL;
  for (int i = 0; i < 3; i++) CHECK(float32_view(env, argv[i], &v[i], &n[i]));
  for (int i = 0; i < 4; i++) CHECK(napi_get_value_int64(env, argv[3 + i], &dims[i]));
  CHECK(napi_get_value_double(env, argv[7], &scale));
  int64_t B = dims[0], H = dims[1], T = dims[2], S = dims[3];
  if (B < 1 || H < 1 || T < 1 || S < 1 || (int64_t)n[0] != B * H * T * S || n[2] != n[0] ||
      ((int64_t)n[1] != T * S && (int64_t)n[1] != B * T * S)) {
    napi_throw_range_error(env, NULL, "lowrank_native.maskedSoftmax: scores and out must be [B, H, T, S], bias [1 or B, T, S]");
    return NULL;
  }
  masked_softmax(v[0], v[1], v[2], B, H, T, S, (int64_t)n[1] == B * T * S && B > 1, (float)scale);
  return NULL;
}

/* maskedSoftmaxGrad(probs, dy, out, S, scale) */
static napi_value MaskedSoftmaxGrad(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  float *v[3];
  int64_t S;
  double scale;
  if (!get_args(env, info, 5, argv, "lowrank_native.maskedSoftmaxGrad takes (probs, dy, out, S, scale)")) return NULL;
  int64_t n = same_length_views(env, argv, 3, v, "maskedSoftmaxGrad");
  if (n < 0) return NULL;
  CHECK(napi_get_value_int64(env, argv[3], &S));
  CHECK(napi_get_value_double(env, argv[4], &scale));
  if (S < 1 || n % S != 0) {
    napi_throw_range_error(env, NULL, "lowrank_native.maskedSoftmaxGrad: the arrays are not whole rows of S");
    return NULL;
  }
  masked_softmax_grad(v[0], v[1], v[2], n / S, S, (float)scale);
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
  napi_value argv[1];
  int32_t n = 0;
  if (!get_args(env, info, 1, argv, "lowrank_native.setThreads takes a thread count >= 1")) return NULL;
  if (napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    napi_throw_range_error(env, NULL, "lowrank_native.setThreads takes a thread count >= 1");
    return NULL;
  }
  set_threads(n);
  configured_threads = n;
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
      {"crossEntropy", NULL, CrossEntropy, NULL, NULL, NULL, napi_default, NULL},
      {"crossEntropyGrad", NULL, CrossEntropyGrad, NULL, NULL, NULL, napi_default, NULL},
      {"swiglu", NULL, SwiGlu, NULL, NULL, NULL, napi_default, NULL},
      {"swigluGrad", NULL, SwiGluGrad, NULL, NULL, NULL, napi_default, NULL},
      {"adamw", NULL, AdamW, NULL, NULL, NULL, napi_default, NULL},
      {"rmsNorm", NULL, RmsNorm, NULL, NULL, NULL, napi_default, NULL},
      {"rmsNormGradX", NULL, RmsNormGradX, NULL, NULL, NULL, napi_default, NULL},
      {"rmsNormGradW", NULL, RmsNormGradW, NULL, NULL, NULL, napi_default, NULL},
      {"maskedSoftmax", NULL, MaskedSoftmax, NULL, NULL, NULL, napi_default, NULL},
      {"maskedSoftmaxGrad", NULL, MaskedSoftmaxGrad, NULL, NULL, NULL, napi_default, NULL},
      {"setThreads", NULL, SetThreads, NULL, NULL, NULL, napi_default, NULL},
      {"threads", NULL, Threads, NULL, NULL, NULL, napi_default, NULL},
      {"library", NULL, Library, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (register_frozen(env, exports) != napi_ok) return NULL;
  if (register_quants(env, exports) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(lowrank_native, Init)
