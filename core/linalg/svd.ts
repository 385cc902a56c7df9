/**
 * Singular value decompositions on Float64Array, for what tfjs does not offer (it has no SVD):
 *
 * - `jacobiSvd`: one-sided Jacobi (Hestenes 1958; Demmel & Veselić, "Jacobi's method is more
 *   accurate than QR", SIAM J. Matrix Anal. Appl. 1992). Exact to working precision; O(m·n²) per
 *   sweep, so for small and medium matrices.
 * - `randomizedSvd`: top-k by randomized subspace iteration (Halko, Martinsson & Tropp,
 *   arXiv:0909.4061, Algorithm 4.4 + §5.1), as torch.svd_lowrank does; O(m·n·(k+p)) per pass.
 * - `truncatedSvd`: top-k by whichever of the two fits the matrix size.
 *
 * Matrices are row-major: `a[i * n + j]` is row i, column j of an m×n matrix.
 */
import { Random } from '../random.ts';
import { symmetricEigen } from './symmetric-eigen.ts';

export interface SvdResult {
  /** Rows and columns of the input, and the number of singular triplets returned. */
  m: number;
  n: number;
  k: number;
  /** [m, k] row-major, orthonormal columns. */
  U: Float64Array;
  /** [k], descending, ≥ 0. */
  S: Float64Array;
  /** [k, n] row-major, orthonormal rows. */
  Vt: Float64Array;
}

export interface JacobiOptions {
  /** Columns p, q count as orthogonal when |⟨g_p, g_q⟩| ≤ tol·‖g_p‖·‖g_q‖. */
  tol?: number;
  maxSweeps?: number;
  /** Start from the Gram matrix's eigenvectors (default, from 16 columns): the same result in fewer sweeps. */
  precondition?: boolean;
}

/** Thin SVD A = U·diag(S)·Vt with k = min(m, n). */
export function jacobiSvd(a: Float64Array, m: number, n: number, opts: JacobiOptions = {}): SvdResult {
  checkShape(a, m, n);
  if (m >= n) {
    // Columns of A, stored contiguously (column j at j·m).
    const g = new Float64Array(m * n);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) g[j * m + i] = a[i * n + j];
    const { U, S, V } = orthogonalizeColumns(g, m, n, opts);
    return { m, n, k: n, U, S, Vt: transposeRowMajor(V, n, n) };
  }
  // Aᵀ = U'·S·V'ᵀ  ⇒  A = V'·S·U'ᵀ. Column j of Aᵀ is row j of A: already contiguous.
  const { U, S, V } = orthogonalizeColumns(Float64Array.from(a), n, m, opts);
  return { m, n, k: m, U: V, S, Vt: transposeRowMajor(U, n, m) };
}

/**
 * Hestenes' one-sided Jacobi on the `cols` columns (length `rows` ≥ cols) of G, column-major:
 * rotate column pairs until all are orthogonal; then G = U·S and the accumulated rotations are V.
 * Returns U [rows, cols] and V [cols, cols] row-major, sorted by descending singular value.
 */
function orthogonalizeColumns(
  g: Float64Array,
  rows: number,
  cols: number,
  opts: JacobiOptions,
): { U: Float64Array; S: Float64Array; V: Float64Array } {
  const tol = opts.tol ?? 1e-15;
  const maxSweeps = opts.maxSweeps ?? 80;
  const v = new Float64Array(cols * cols); // column-major, column j at j·cols
  if (cols >= PRECONDITION_FROM && opts.precondition !== false) precondition(g, rows, cols, v);
  else for (let j = 0; j < cols; j++) v[j * cols + j] = 1;
  // A column whose norm is below ε²·‖A‖ is numerically zero (a rank-deficient matrix has them):
  // rotating it against others only stirs rounding noise, and its relative test never passes, so the
  // sweeps would run to maxSweeps (as LAPACK's dgesvj skips them).
  let frobenius2 = 0;
  for (let i = 0; i < rows * cols; i++) frobenius2 += g[i] * g[i];
  const negligible = frobenius2 * 1e-30;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let rotated = false;
    for (let p = 0; p < cols - 1; p++) {
      const gp = p * rows;
      for (let q = p + 1; q < cols; q++) {
        const gq = q * rows;
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < rows; i++) {
          const x = g[gp + i];
          const y = g[gq + i];
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (gamma === 0 || alpha <= negligible || beta <= negligible || Math.abs(gamma) <= tol * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        // The rotation that zeroes the (p, q) entry of GᵀG (Golub & Van Loan §8.5.2, sym.schur2).
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < rows; i++) {
          const x = g[gp + i];
          const y = g[gq + i];
          g[gp + i] = c * x - s * y;
          g[gq + i] = s * x + c * y;
        }
        const vp = p * cols;
        const vq = q * cols;
        for (let i = 0; i < cols; i++) {
          const x = v[vp + i];
          const y = v[vq + i];
          v[vp + i] = c * x - s * y;
          v[vq + i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }

  const norms = new Float64Array(cols);
  for (let j = 0; j < cols; j++) {
    let sum = 0;
    for (let i = 0; i < rows; i++) sum += g[j * rows + i] ** 2;
    norms[j] = Math.sqrt(sum);
  }
  const order = Array.from({ length: cols }, (_, j) => j).sort((x, y) => norms[y] - norms[x]);
  const U = new Float64Array(rows * cols);
  const S = new Float64Array(cols);
  const V = new Float64Array(cols * cols);
  const tiny = (norms[order[0]] || 0) * rows * 1e-15;
  const missing: number[] = [];
  order.forEach((j, t) => {
    S[t] = norms[j];
    for (let i = 0; i < cols; i++) V[i * cols + t] = v[j * cols + i];
    if (norms[j] <= tiny || norms[j] === 0) {
      S[t] = 0;
      missing.push(t);
      return;
    }
    for (let i = 0; i < rows; i++) U[i * cols + t] = g[j * rows + i] / norms[j];
  });
  // A rank-deficient input leaves some columns of U undetermined; complete them to an
  // orthonormal set so U stays orthonormal (their singular values are 0, so A is unchanged).
  if (missing.length > 0) completeOrthonormal(U, rows, cols, missing);
  return { U, S, V };
}

/** From this many columns on, the sweeps start from the Gram matrix's eigenvectors. */
const PRECONDITION_FROM = 16;

/**
 * Starts one-sided Jacobi near its answer: V₀ = the eigenvectors of GᵀG (a tridiagonal eigensolve,
 * symmetric-eigen.ts), G ← G·V₀, v ← V₀. The columns of G·V₀ are orthogonal up to the Gram's
 * rounding, so the sweeps that follow (the same rotations and the same stopping test, hence the same
 * accuracy) finish in 2–3 instead of 8–12: a 256×256 SVD ~4× faster.
 */
function precondition(g: Float64Array, rows: number, cols: number, v: Float64Array): void {
  const gram = new Float64Array(cols * cols);
  for (let p = 0; p < cols; p++) {
    const gp = p * rows;
    for (let q = 0; q <= p; q++) {
      const gq = q * rows;
      let dot = 0;
      for (let i = 0; i < rows; i++) dot += g[gp + i] * g[gq + i];
      gram[p * cols + q] = gram[q * cols + p] = dot;
    }
  }
  const { vectors } = symmetricEigen(gram, cols); // row-major, column k = eigenvector k
  for (let j = 0; j < cols; j++) for (let i = 0; i < cols; i++) v[j * cols + i] = vectors[i * cols + j];
  const rotated = new Float64Array(rows * cols);
  const column = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    for (let c = 0; c < cols; c++) column[c] = g[c * rows + i];
    for (let j = 0; j < cols; j++) {
      const vj = j * cols;
      let sum = 0;
      for (let c = 0; c < cols; c++) sum += column[c] * v[vj + c];
      rotated[j * rows + i] = sum;
    }
  }
  g.set(rotated);
}

/** Fills columns `missing` of the row-major [rows, cols] matrix Q with unit vectors orthogonal to the rest. */
function completeOrthonormal(q: Float64Array, rows: number, cols: number, missing: number[]): void {
  const isMissing = new Set(missing);
  const filled = Array.from({ length: cols }, (_, j) => j).filter((j) => !isMissing.has(j));
  let candidate = 0;
  for (const t of missing) {
    for (; candidate < rows; candidate++) {
      const e = new Float64Array(rows);
      e[candidate] = 1;
      // Two passes of Gram–Schmidt ("twice is enough", Giraud et al. 2005).
      for (let pass = 0; pass < 2; pass++) {
        for (const j of filled) {
          let dot = 0;
          for (let i = 0; i < rows; i++) dot += q[i * cols + j] * e[i];
          for (let i = 0; i < rows; i++) e[i] -= dot * q[i * cols + j];
        }
      }
      let norm = 0;
      for (let i = 0; i < rows; i++) norm += e[i] * e[i];
      norm = Math.sqrt(norm);
      if (norm > 1e-8) {
        for (let i = 0; i < rows; i++) q[i * cols + t] = e[i] / norm;
        filled.push(t);
        candidate++;
        break;
      }
    }
  }
}

export interface RandomizedSvdOptions {
  /** Extra sample columns beyond k (Halko et al. §4.2 suggest 5–10). */
  oversample?: number;
  /** Power (subspace) iterations; each sharpens the spectrum's decay by one power (§4.5). */
  niter?: number;
  seed?: number;
}

/** Top-k SVD of A by randomized subspace iteration (Halko et al. Algorithm 4.4, then §5.1). */
export function randomizedSvd(a: Float64Array, m: number, n: number, k: number, opts: RandomizedSvdOptions = {}): SvdResult {
  checkShape(a, m, n);
  const full = Math.min(m, n);
  if (!Number.isInteger(k) || k < 1 || k > full) {
    throw new RangeError(`randomizedSvd: k = ${k} must be an integer in [1, ${full}] for a ${m}×${n} matrix`);
  }
  const l = Math.min(k + (opts.oversample ?? 10), full);
  const niter = opts.niter ?? 4;
  const rng = new Random(opts.seed ?? 0);

  // Ω ~ N(0, 1) [n, l]; panels are column-major: column j of an [r, l] panel at j·r.
  const omega = new Float64Array(n * l);
  for (let i = 0; i < omega.length; i++) omega[i] = rng.normal();
  let q = orthonormalize(times(a, m, n, omega, l), m, l, rng); // Q = orth(A·Ω)   [m, l]
  for (let it = 0; it < niter; it++) {
    const z = orthonormalize(transposeTimes(a, m, n, q, l), n, l, rng); // orth(Aᵀ·Q)  [n, l]
    q = orthonormalize(times(a, m, n, z, l), m, l, rng); // orth(A·Z)  [m, l]
  }
  // B = Qᵀ·A [l, n]; row j of B is (Aᵀ·q_j)ᵀ, i.e. the column-major panel Aᵀ·Q read row-major.
  const b = transposeTimes(a, m, n, q, l);
  const small = jacobiSvd(b, l, n); // B = Ub·S·Vt, Ub [l, l]
  // U = Q·Ub, keeping the top k.
  const U = new Float64Array(m * k);
  for (let i = 0; i < m; i++) {
    for (let t = 0; t < k; t++) {
      let sum = 0;
      for (let j = 0; j < l; j++) sum += q[j * m + i] * small.U[j * small.k + t];
      U[i * k + t] = sum;
    }
  }
  return { m, n, k, U, S: small.S.slice(0, k), Vt: small.Vt.slice(0, k * n) };
}

export interface TruncatedSvdOptions extends RandomizedSvdOptions {
  /**
   * 'auto' runs Jacobi when m·n·min(m, n) ≤ exactWorkLimit or when k + oversampling is a third of
   * min(m, n) or more (the randomized method's 2·niter + 1 passes over k + p columns then cost more
   * than the preconditioned Jacobi SVD of the whole matrix), else the randomized method.
   */
  method?: 'auto' | 'exact' | 'randomized';
  exactWorkLimit?: number;
}

/** The top-k singular triplets of A. */
export function truncatedSvd(a: Float64Array, m: number, n: number, k: number, opts: TruncatedSvdOptions = {}): SvdResult {
  const method = opts.method ?? 'auto';
  const full = Math.min(m, n);
  const exact = method === 'exact' || (method === 'auto' && (m * n * full <= (opts.exactWorkLimit ?? 2 ** 27) || 3 * (k + (opts.oversample ?? 10)) >= full));
  if (!exact) return randomizedSvd(a, m, n, k, opts);
  if (!Number.isInteger(k) || k < 1 || k > full) {
    throw new RangeError(`truncatedSvd: k = ${k} must be an integer in [1, ${full}] for a ${m}×${n} matrix`);
  }
  const svd = jacobiSvd(a, m, n);
  const U = new Float64Array(m * k);
  for (let i = 0; i < m; i++) for (let t = 0; t < k; t++) U[i * k + t] = svd.U[i * svd.k + t];
  return { m, n, k, U, S: svd.S.slice(0, k), Vt: svd.Vt.slice(0, k * n) };
}

/** A [m, n] row-major times the column-major panel X [n, l] -> column-major panel [m, l]. */
function times(a: Float64Array, m: number, n: number, x: Float64Array, l: number): Float64Array {
  const y = new Float64Array(m * l);
  for (let j = 0; j < l; j++) {
    const xj = j * n;
    for (let i = 0; i < m; i++) {
      const row = i * n;
      let sum = 0;
      for (let c = 0; c < n; c++) sum += a[row + c] * x[xj + c];
      y[j * m + i] = sum;
    }
  }
  return y;
}

/** Aᵀ·X for A [m, n] row-major and the column-major panel X [m, l] -> column-major panel [n, l]. */
function transposeTimes(a: Float64Array, m: number, n: number, x: Float64Array, l: number): Float64Array {
  const z = new Float64Array(n * l);
  for (let j = 0; j < l; j++) {
    const zj = j * n;
    for (let i = 0; i < m; i++) {
      const xi = x[j * m + i];
      if (xi === 0) continue;
      const row = i * n;
      for (let c = 0; c < n; c++) z[zj + c] += a[row + c] * xi;
    }
  }
  return z;
}

/**
 * Orthonormal basis of the column-major panel's range, in place, by modified Gram–Schmidt run
 * twice. A column that collapses (the panel is rank-deficient) is replaced by a fresh random one.
 */
function orthonormalize(y: Float64Array, rows: number, cols: number, rng: Random): Float64Array {
  for (let j = 0; j < cols; j++) {
    const yj = j * rows;
    for (let attempt = 0; attempt < 3; attempt++) {
      let before = 0;
      for (let i = 0; i < rows; i++) before += y[yj + i] ** 2;
      for (let pass = 0; pass < 2; pass++) {
        for (let p = 0; p < j; p++) {
          const yp = p * rows;
          let dot = 0;
          for (let i = 0; i < rows; i++) dot += y[yp + i] * y[yj + i];
          for (let i = 0; i < rows; i++) y[yj + i] -= dot * y[yp + i];
        }
      }
      let norm = 0;
      for (let i = 0; i < rows; i++) norm += y[yj + i] ** 2;
      norm = Math.sqrt(norm);
      if (norm > 1e-10 * Math.sqrt(before) && norm > 0) {
        for (let i = 0; i < rows; i++) y[yj + i] /= norm;
        break;
      }
      for (let i = 0; i < rows; i++) y[yj + i] = rng.normal();
    }
  }
  return y;
}

function transposeRowMajor(x: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j];
  return t;
}

function checkShape(a: Float64Array, m: number, n: number): void {
  if (!(Number.isInteger(m) && Number.isInteger(n) && m >= 1 && n >= 1) || a.length !== m * n) {
    throw new RangeError(`svd: ${a.length} values do not form a ${m}×${n} matrix`);
  }
}
