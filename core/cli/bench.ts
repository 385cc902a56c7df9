/**
 * `lowrank bench` (`npm run bench`): the backend's matmul GFLOP/s per shape, and forward (and
 * full fine-tuning) tokens/s at batch 8 × seq 128 for the bundled model and a 4-layer, 256-wide Llama.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { runMatmulBench } from '../backend/matmul-bench.ts';
import { parseModelConfig, parameterCount } from '../models/config.ts';
import { buildModel, loadModel } from '../models/load.ts';
import { initialWeights } from '../models/init.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { lmLoss } from '../train/pretrain.ts';
import { AdamW } from '../optim/adamw.ts';
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
  const perRun = timeIt(() => tf.tidy(() => model.forward(tf.tensor2d(ids, [BATCH, SEQ], 'int32')).logits.dataSync()), seconds);
  return (BATCH * SEQ) / perRun;
}

function trainTokensPerSecond(model: CausalLM, seconds: number): number {
  const params = new Map<string, tf.Variable>();
  for (const [name, w] of model.weights) params.set(name, tf.variable(w, true, `bench/${name}/${Math.random()}`));
  const trainModel = buildModel(model.config, params as Map<string, tf.Tensor>);
  const optimizer = new AdamW(params);
  const ids = randomIds(model.config.vocabSize);
  const batch = { ids, labels: ids, batchSize: BATCH, seqLen: SEQ };
  const vars = [...params.values()];
  const perRun = timeIt(() => {
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => lmLoss(trainModel, batch).loss), vars);
    const byName = new Map<string, tf.Tensor>();
    for (const [name, v] of params) byName.set(name, grads[v.name]);
    optimizer.step(byName, 1e-4);
    value.dataSync();
    value.dispose();
    tf.dispose(Object.values(grads));
  }, seconds, 2);
  optimizer.dispose();
  for (const v of params.values()) v.dispose();
  return (BATCH * SEQ) / perRun;
}

export async function benchCommand(flags: Flags): Promise<void> {
  const quick = Boolean(flags.quick);
  const seconds = quick ? 0.5 : 2;
  const backend = await initBackend();
  const out = (line: string) => !flags.json && console.log(line);
  out(`backend: ${backend.backend}${backend.wasmThreads ? `, ${backend.wasmThreads} thread(s)` : ''}; kernels: ${backend.kernels.join(', ') || 'stock'}`);
  out('\nmatmul GFLOP/s');
  const matmul = await runMatmulBench({ seconds: quick ? 0.5 : 1 });
  for (const r of matmul) out(`  ${r.shape.padEnd(28)} ${r.kernels.padEnd(8)} ${r.gflops.toFixed(2).padStart(8)}`);

  const models: Array<{ name: string; model: CausalLM }> = [];
  if (fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json'))) {
    models.push({ name: `bundled (${path.basename(BUNDLED_MODEL_DIR)})`, model: loadModel(BUNDLED_MODEL_DIR) });
  } else {
    out(`\n(bundled model not found at ${BUNDLED_MODEL_DIR}; skipped)`);
  }
  const benchConfig = parseModelConfig(benchLlamaConfig(), 'bench config');
  models.push({ name: 'llama 4×256', model: buildModel(benchConfig, initialWeights(benchConfig, 0)) });
  out(`\nbatch ${BATCH} × seq ${SEQ}                        params   forward tok/s   full-FT train tok/s`);
  const rows = [];
  for (const { name, model } of models) {
    const forward = forwardTokensPerSecond(model, seconds);
    const training = trainTokensPerSecond(model, seconds);
    const parameters = parameterCount(model.config);
    rows.push({ model: name, parameters, forwardTokensPerSecond: forward, fullFinetuneTokensPerSecond: training });
    out(`  ${name.padEnd(34)} ${(parameters / 1e6).toFixed(2).padStart(6)} M ${forward.toFixed(0).padStart(12)} ${training.toFixed(0).padStart(16)}`);
    model.dispose();
  }
  if (flags.json) printJson({ backend, matmul, models: rows, batch: BATCH, seqLen: SEQ });
}
