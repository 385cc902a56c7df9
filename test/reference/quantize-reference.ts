/**
 * Reference quantisers for the frozen base, written from their papers and bitsandbytes' definitions
 * (independently of native/frozen.c; CONVENTIONS.md 7), in float64 with every float32 step rounded by
 * Math.fround so the results are bit-comparable:
 *  - NF4 (QLoRA, arXiv:2305.14314 §3; bitsandbytes `quantize_4bit(quant_type='nf4', blocksize=64)`):
 *    per block of 64 values in flat order, absmax; each value·(1/absmax) takes the level whose
 *    interval (bounded by the midpoints bitsandbytes' kernel compares against, with `>`) holds it;
 *    dequantised value = level·absmax.
 *  - int8 row-wise absmax (LLM.int8 vector-wise quantisation, arXiv:2208.07339):
 *    q = round-half-even(x·(127/absmax)), clamped to ±127; dequantised value = q·(absmax/127).
 */
const f = Math.fround;

/** bitsandbytes' NF4 levels, ascending (functional.py get_4bit_type('nf4')). */
export const NF4_LEVELS = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
].map(f);

/**
 * The 15 decision thresholds of bitsandbytes' dQuantizeNF4 (csrc/kernels.cu), ascending: value > t_i
 * means a level above i. The kernel writes them as float literals (`0.8614784181118011f`), which the
 * compiler rounds from the decimal straight to float32. Math.fround(0.8614784181118011) rounds twice
 * (decimal → double → float) and lands on the other neighbour for four of them, so those are given
 * by their float32 bit patterns, computed exactly (Python fractions: the float32 nearest the decimal).
 */
const fromBits = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0];
export const NF4_THRESHOLDS = [
  fromBits(0xbf591cd9), // -0.8480964004993439 (fround gives the neighbour 0xbf591cd8)
  -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984, -0.13791173323988914,
  -0.045525018125772476, 0.03979014977812767,
  fromBits(0x3df64863), // 0.1202552504837513
  0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
  fromBits(0x3f006d03), // 0.5016634166240692
  0.6427869200706482,
  fromBits(0x3f5c89d9), // 0.8614784181118011
].map(f);

export const NF4_BLOCK = 64;

function nf4Code(x: number): number {
  let code = 0;
  while (code < 15 && x > NF4_THRESHOLDS[code]) code++;
  return code;
}

/** NF4-quantise then dequantise `values` (flat order, blocks of 64): what the quantised weight reads back as. */
export function nf4RoundTrip(values: Float32Array): Float32Array {
  const out = new Float32Array(values.length);
  for (let start = 0; start < values.length; start += NF4_BLOCK) {
    const end = Math.min(values.length, start + NF4_BLOCK);
    let absmax = 0;
    for (let i = start; i < end; i++) absmax = Math.max(absmax, Math.abs(values[i]));
    absmax = f(absmax);
    const inverse = absmax > 0 ? f(1 / absmax) : 0;
    for (let i = start; i < end; i++) out[i] = f(NF4_LEVELS[nf4Code(f(values[i] * inverse))] * absmax);
  }
  return out;
}

function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** int8 row-wise absmax quantise then dequantise a [rows, cols] weight. */
export function int8RoundTrip(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    let absmax = 0;
    for (let c = 0; c < cols; c++) absmax = Math.max(absmax, Math.abs(values[r * cols + c]));
    absmax = f(absmax);
    const inverse = absmax > 0 ? f(127 / absmax) : 0;
    const scale = f(absmax / 127);
    for (let c = 0; c < cols; c++) {
      // An int8 has no −0: `| 0` makes the code an integer as the stored byte is.
      const q = Math.max(-127, Math.min(127, roundHalfEven(f(values[r * cols + c] * inverse)))) | 0;
      out[r * cols + c] = f(q * scale);
    }
  }
  return out;
}
