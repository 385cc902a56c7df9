/**
 * `lowrank bench` (`npm run bench`): the backend's matmul GFLOP/s per shape, and forward (and
 * full fine-tuning) tokens/s at batch 8 × seq 128 for the bundled model and a 4-layer, 256-wide Llama;
 * one set of tables per available backend (see benchCommand). LOWRANK_THREADS=N sets the wasm
 * thread count, to compare the threaded build.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { configureNative, initBackend, type BackendInfo } from '../backend/index.ts';
import { startWebgpuBackend } from '../backend/webgpu.ts';
import { runMatmulBench, withMatmulKernels, type MatmulKernels } from '../backend/matmul-bench.ts';
import { activeWasmKernels, startWasmBackend } from '../backend/wasm/install.ts';
import { parseModelConfig, parameterCount, type ModelConfig } from '../models/config.ts';
import { buildModel, loadModel } from '../models/load.ts';
import { initialWeights } from '../models/init.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { lmLoss } from '../train/pretrain.ts';
import { AdamW } from '../optim/adamw.ts';
import { getMethod, resolveParams, resolveTargets } from '../methods/index.ts';
import { adapterActivationFloats, estimateTrainingMemory, formatBytes } from '../train/memory.ts';
import { BUNDLED_MODEL_DIR } from '../resources.ts';
import type { Flags } from '../cli.ts';
import { printJson } from './flags.ts';

const BATCH = 8;
const SEQ = 128;

/** The bench model: a 4-layer, 256-wide Llama (GQA 8/4 heads, SwiGLU 688, 4096 vocabulary). */
export function benchLlamaConfig(): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 256,
    intermediate_size: 688,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    num_hidden_layers: 4,
    vocab_size: 4096,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
  };
}

function randomIds(vocab: number): Int32Array {
  const ids = new Int32Array(BATCH * SEQ);
  for (let i = 0; i < ids.length; i++) ids[i] = (i * 7919 + 13) % vocab;
  return ids;
}

function timeIt(fn: () => void, minSeconds: number, minRuns = 2): number {
  fn(); // warm-up: kernel setup, first allocations
  let runs = 0;
  const start = performance.now();
  while (runs < minRuns || performance.now() - start < minSeconds * 1000) {
    fn();
    runs++;
  }
  return (performance.now() - start) / 1000 / runs;
}

function forwardTokensPerSecond(model: CausalLM, seconds: number): number {
  const ids = randomIds(model.config.vocabSize);
  // Returning nothing from tidy: a returned typed array would be walked element by element.
  const perRun = timeIt(() => tf.tidy(() => void model.forward(tf.tensor2d(ids, [BATCH, SEQ], 'int32')).logits.dataSync()), seconds);
  return (BATCH * SEQ) / perRun;
}

/**
 * Matmul FLOPs of one training step at batch × seq: forward 2·(weights used)·tokens plus attention
 * (QKᵀ and PV: 2·2·B·H·T²·D), backward twice the forward for full fine-tuning (dX and dW) but once
 * for adapters (dX only through frozen weights) plus the adapters' own small products.
 */
export function trainingFlops(c: ModelConfig, mode: 'full' | 'adapter', adapterParams = 0): number {
  const tokens = BATCH * SEQ;
  // Every weight takes part in a matmul except the embedding lookup; a tied head reuses it as a matmul.
  const matmulParams = parameterCount(c) - (c.tieWordEmbeddings ? 0 : c.vocabSize * c.hiddenSize);
  const attention = 2 * 2 * BATCH * c.numHeads * SEQ * SEQ * c.headDim * c.numLayers;
  const forward = 2 * matmulParams * tokens + attention + 2 * adapterParams * tokens;
  return forward * (mode === 'full' ? 3 : 2) + (mode === 'adapter' ? 2 * adapterParams * tokens : 0);
}

interface TrainBench {
  tokensPerSecond: number;
  gflops: number;
  estimatedTensorBytes: number;
  measuredTensorBytes: number;
  trainableParameters: number;
  /** Loss of the first step (same weights and batch for every run: compares kernel sets). */
  firstLoss: number;
  /** Where a step's time goes (ms), from tf.profile of one step: kernels by kind, the rest is JS. */
  split: { matmulMs: number; otherKernelsMs: number; jsMs: number; topOps: Array<[string, number]> };
}

const MATMUL_KERNELS = new Set(['BatchMatMul', '_FusedMatMul']);

/** Times training steps (forward, backward, AdamW) of `full` or LoRA rank 8 on q,k,v,o. */
export async function trainBench(model: CausalLM, mode: 'full' | 'lora', seconds: number): Promise<TrainBench> {
  const method = getMethod(mode);
  const targets = mode === 'lora' ? resolveTargets(model, ['q_proj', 'k_proj', 'v_proj', 'o_proj']) : [];
  const attached = method.attach(model, resolveParams(method.id, method.schema, mode === 'lora' ? { rank: 8, alpha: 16, dropout: 0 } : {}), { targets, seed: 0 });
  const params = attached.trainable;
  const optimizer = new AdamW(params, { lrScale: (n) => attached.lrScale(n) });
  const ids = randomIds(model.config.vocabSize);
  const batch = { ids, labels: ids, batchSize: BATCH, seqLen: SEQ };
  const vars = [...params.values()];
  let lastLoss = NaN;
  const step = () => {
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => lmLoss(model, batch).loss), vars);
    const byName = new Map<string, tf.Tensor>();
    for (const [name, v] of params) byName.set(name, grads[v.name]);
    optimizer.step(byName, 1e-5);
    lastLoss = value.dataSync()[0];
    value.dispose();
    tf.dispose(Object.values(grads));
  };
  step();
  const firstLoss = lastLoss;
  const started = performance.now();
  const profile = await tf.profile(step);
  const profiledMs = performance.now() - started;
  const measuredTensorBytes = profile.peakBytes;
  const byKernel = new Map<string, number>();
  for (const k of profile.kernels) byKernel.set(k.name, (byKernel.get(k.name) ?? 0) + Number(k.kernelTimeMs));
  const matmulMs = [...byKernel].filter(([n]) => MATMUL_KERNELS.has(n)).reduce((t, [, ms]) => t + ms, 0);
  const kernelMs = [...byKernel.values()].reduce((t, ms) => t + ms, 0);
  const split = {
    matmulMs,
    otherKernelsMs: kernelMs - matmulMs,
    jsMs: Math.max(0, profiledMs - kernelMs),
    topOps: [...byKernel].filter(([n]) => !MATMUL_KERNELS.has(n)).sort((a, b) => b[1] - a[1]).slice(0, 5),
  };
  const perRun = timeIt(step, seconds, 2);
  const trainable = attached.trainableParameterCount();
  const estimate = estimateTrainingMemory({
    config: model.config,
    batchSize: BATCH,
    seqLen: SEQ,
    trainableParameters: trainable,
    optimizerStateBytes: 8 * trainable,
    trainsBaseWeights: mode === 'full',
    adapterActivationFloatsPerToken: adapterActivationFloats(model, targets, 8, 0),
  });
  optimizer.dispose();
  attached.detach();
  return {
    tokensPerSecond: (BATCH * SEQ) / perRun,
    gflops: trainingFlops(model.config, mode === 'full' ? 'full' : 'adapter', mode === 'full' ? 0 : trainable) / perRun / 1e9,
    estimatedTensorBytes: estimate.tensorBytes,
    measuredTensorBytes,
    trainableParameters: trainable,
    firstLoss,
    split,
  };
}

/** The matmul, forward and training tables on the active tfjs backend. */
async function benchSections(flags: Flags, out: (line: string) => void): Promise<Record<string, unknown>> {
  const quick = Boolean(flags.quick);
  const seconds = quick ? 0.5 : 3;
  const matmul = await runMatmulBench({ seconds: quick ? 0.5 : 1 });
  // The kernels training uses: the native BLAS where it is built, else the project's wasm kernels.
  const active: MatmulKernels = matmul.some((r) => r.kernels === 'native') ? 'native' : 'project';
  const variants = [...new Set(matmul.map((r) => r.kernels))];
  const gflopsOf = (shape: string, kernels: MatmulKernels) => matmul.find((r) => r.shape === shape && r.kernels === kernels)?.gflops ?? NaN;
  const shapes = [...new Set(matmul.map((r) => r.shape))];
  const reference = gflopsOf(shapes[0], active); // A·B
  const columnName = (v: MatmulKernels) => (v === 'native' ? 'native BLAS' : v === 'project' ? 'project wasm' : 'stock wasm');
  out(`\nmatmul GFLOP/s (float32; training uses ${columnName(active)})`);
  out(`  ${'shape'.padEnd(28)} ${variants.map((v) => columnName(v).padStart(12)).join(' ')} ${'of A·B'.padStart(7)}`);
  for (const shape of shapes) {
    out(`  ${shape.padEnd(28)} ${variants.map((v) => gflopsOf(shape, v).toFixed(2).padStart(12)).join(' ')} ` +
      `${`${((100 * gflopsOf(shape, active)) / reference).toFixed(0)} %`.padStart(7)}`);
  }

  const models: Array<{ name: string; model: CausalLM }> = [];
  if (fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json'))) {
    models.push({ name: `bundled ${path.basename(BUNDLED_MODEL_DIR)}`, model: loadModel(BUNDLED_MODEL_DIR) });
  } else {
    out(`\n(bundled model not found at ${BUNDLED_MODEL_DIR}; skipped)`);
  }
  const benchConfig = parseModelConfig(benchLlamaConfig(), 'bench config');
  models.push({ name: 'llama 4×256', model: buildModel(benchConfig, initialWeights(benchConfig, 0)) });

  out(`\nforward, batch ${BATCH} × seq ${SEQ}`);
  const rows: Array<Record<string, unknown>> = [];
  for (const { name, model } of models) {
    const forward = forwardTokensPerSecond(model, seconds);
    const parameters = parameterCount(model.config);
    rows.push({ model: name, parameters, forwardTokensPerSecond: forward });
    out(`  ${name.padEnd(24)} ${(parameters / 1e6).toFixed(2).padStart(6)} M params ${forward.toFixed(0).padStart(8)} tokens/s`);
  }
  const benchModel = models[models.length - 1].model;
  out(`\ntraining the 4-layer 256-wide Llama, batch ${BATCH} × seq ${SEQ} (AdamW)`);
  out(`  ${'method'.padEnd(26)} ${'trainable'.padStart(10)} ${'tokens/s'.padStart(9)} ${'GFLOP/s'.padStart(8)} ${'of A·B'.padStart(7)} ${'est. peak'.padStart(10)} ${'measured'.padStart(9)}`);
  const training: Array<Record<string, unknown>> = [];
  // On wasm, LoRA once more on the project's wasm kernels without the native BLAS (where it is
  // built) and on the stock kernels: the "before" of each. (Full fine-tuning cannot run on stock
  // wasm at all: it has no UnsortedSegmentSum for the embeddings.)
  const onWasm = tf.getBackend() === 'wasm' && !quick && activeWasmKernels().length > 0;
  type Row = { mode: 'lora' | 'full'; kernels: MatmulKernels; label: string };
  const runs: Row[] = [
    { mode: 'lora', kernels: active, label: 'LoRA r=8 on q,k,v,o' },
    { mode: 'full', kernels: active, label: 'full fine-tuning' },
  ];
  if (onWasm && active === 'native') runs.push({ mode: 'lora', kernels: 'project', label: 'LoRA, wasm kernels only' });
  if (onWasm) runs.push({ mode: 'lora', kernels: 'stock', label: 'LoRA, stock wasm kernels' });
  for (const run of runs) {
    const r = await withMatmulKernels(run.kernels, () => trainBench(benchModel, run.mode, run.kernels === 'stock' ? 1 : seconds));
    training.push({ method: run.mode, kernels: run.kernels, ...r, fractionOfMatmulRate: r.gflops / reference });
    out(
      `  ${run.label.padEnd(26)} ${r.trainableParameters.toLocaleString('en-US').padStart(10)} ${r.tokensPerSecond.toFixed(0).padStart(9)} ` +
        `${r.gflops.toFixed(2).padStart(8)} ${`${((100 * r.gflops) / reference).toFixed(0)} %`.padStart(7)} ` +
        `${formatBytes(r.estimatedTensorBytes).padStart(10)} ${formatBytes(r.measuredTensorBytes).padStart(9)}`,
    );
  }
  out('  (peak = tfjs tensor bytes inside a step: weights, trainable, gradients, AdamW state and activations)');
  const lora = training[0];
  for (const other of training.slice(2)) {
    out(
      `  ${columnName(active)} vs ${columnName(other.kernels as MatmulKernels)}: ${(Number(lora.tokensPerSecond) / Number(other.tokensPerSecond)).toFixed(1)}× the LoRA tokens/s; ` +
        `first-step loss ${Number(lora.firstLoss).toFixed(6)} vs ${Number(other.firstLoss).toFixed(6)} (|Δ| ${Math.abs(Number(lora.firstLoss) - Number(other.firstLoss)).toExponential(1)})`,
    );
  }
  out('\nwhere a training step\'s time goes (one profiled step)');
  for (const t of training) {
    const { matmulMs, otherKernelsMs, jsMs, topOps } = t.split as TrainBench['split'];
    const total = matmulMs + otherKernelsMs + jsMs;
    const pct = (ms: number) => `${((100 * ms) / total).toFixed(0)} %`;
    out(
      `  ${`${String(t.method)} (${String(t.kernels)})`.padEnd(16)} matmul ${matmulMs.toFixed(0)} ms (${pct(matmulMs)}), other ops ${otherKernelsMs.toFixed(0)} ms (${pct(otherKernelsMs)}), ` +
        `JS/engine ${jsMs.toFixed(0)} ms (${pct(jsMs)}); top other ops: ${topOps.map(([n, ms]) => `${n} ${ms.toFixed(0)}`).join(', ')}`,
    );
  }
  for (const { model } of models) model.dispose();
  return { matmul, models: rows, training };
}

/** Set to 1 to bench webgpu also on a software adapter (llvmpipe, SwiftShader): slow, for testing. */
export const BENCH_WEBGPU_ENV = 'LOWRANK_BENCH_WEBGPU';

function describeBackend(info: BackendInfo): string {
  const threads = info.wasmThreads ? `, ${info.wasmThreads} thread(s)` : '';
  const blas = info.nativeAddon == null ? ''
    : 'library' in info.nativeAddon ? `; native BLAS: ${info.nativeAddon.library}, ${info.nativeAddon.threads} thread(s)`
      : `; native BLAS not used: ${info.nativeAddon.unavailable}`;
  const adapter = info.adapter ? ` (${info.adapter}${info.softwareAdapter ? ', software' : ''})` : '';
  return `${info.backend}${threads}${adapter}; kernels: ${info.kernels.join(', ') || 'stock'}${blas}`;
}

/**
 * One set of tables per available backend: the one initBackend chooses, then wasm (the CPU
 * baseline) if that was not it, then webgpu if a hardware adapter exists (never automatically on
 * a software renderer; LOWRANK_BENCH_WEBGPU=1 forces it).
 */
export async function benchCommand(flags: Flags): Promise<void> {
  const out = (line: string) => !flags.json && console.log(line);
  if (flags.real || flags.peer !== undefined) {
    // Real sizes beside PyTorch (bench-real.ts): child processes, so no backend is needed here.
    const { realBench } = await import('./bench-real.ts');
    const result = await realBench(flags, out);
    if (flags.json) printJson(result);
    return;
  }
  const primary = await initBackend();
  const results: Array<{ backend: BackendInfo } & Record<string, unknown>> = [];
  out(`backend: ${describeBackend(primary)}`);
  results.push({ backend: primary, ...(await benchSections(flags, out)) });

  if (primary.backend !== 'wasm') {
    try {
      const wasm = await startWasmBackend();
      const info: BackendInfo = {
        backend: 'wasm', tfjsVersion: tf.version_core, wasmSimd: wasm.simd, wasmThreads: wasm.threads, kernels: wasm.kernels,
        nativeAddon: configureNative(wasm.threads),
      };
      out(`\nbackend: ${describeBackend(info)}`);
      results.push({ backend: info, ...(await benchSections(flags, out)) });
    } catch (e) {
      out(`\n(wasm unavailable: ${e instanceof Error ? e.message : String(e)})`);
    }
  }
  if (primary.backend !== 'webgpu') {
    const forced = process.env[BENCH_WEBGPU_ENV] === '1';
    const gpu = await startWebgpuBackend({ requireHardware: !forced });
    if (gpu.ok) {
      const info: BackendInfo = {
        backend: 'webgpu', tfjsVersion: tf.version_core, adapter: gpu.value.adapter, softwareAdapter: gpu.value.software, kernels: gpu.value.kernels,
      };
      out(`\nbackend: ${describeBackend(info)}`);
      results.push({ backend: info, ...(await benchSections(flags, out)) });
    } else {
      out(`\n(webgpu not benched: ${gpu.reason}${forced ? '' : `; ${BENCH_WEBGPU_ENV}=1 benches a software adapter too`})`);
    }
  }
  await tf.setBackend(primary.backend);
  // The first backend's tables also stay at the top level, where they were before.
  if (flags.json) printJson({ ...results[0], backends: results, batch: BATCH, seqLen: SEQ });
}
