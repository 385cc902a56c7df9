/**
 * The webgpu backend (tfjs-backend-webgpu on Dawn from the `webgpu` package) against the cpu
 * backend. This file is its own process (vitest forks), so webgpu is forced here as
 * LOWRANK_BACKEND=webgpu would: on a machine without a GPU that is Mesa's llvmpipe through GLES
 * (CI installs Mesa in .ci/run). Both backends live in the process; each computation is run
 * on one, then on the other.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { configureNative, initBackend, type BackendInfo } from '../core/backend/index.ts';
import { startWasmBackend } from '../core/backend/wasm/install.ts';
import { webgpuErrors } from '../core/backend/webgpu.ts';
import { relativeError, seededValues } from '../core/backend/cpu-parity.ts';
import { setUpTraining } from '../core/train/setup.ts';
import { writeRealShape } from './fixtures/real-shapes.ts';
import { forwardBackward } from '../core/backend/parity-check.ts';
import { buildTinyModel } from './fixtures/tiny-trained-model.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig } from '../core/train/finetune.ts';
import { openStore } from '../core/store/index.ts';
import { writeTinyCheckpoint, type TinyCheckpointKind } from './fixtures/tiny-checkpoints.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-webgpu-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

let info: BackendInfo;
beforeAll(async () => {
  info = await initBackend({ backend: 'webgpu' });
});
// An invalid pipeline does not throw: its output is just stale memory. No test may cause one.
afterEach(() => {
  expect(webgpuErrors()).toEqual([]);
});

describe('webgpu backend', () => {
  it('starts on an adapter that lowrank info can name', () => {
    expect(info.backend).toBe('webgpu');
    expect(tf.getBackend()).toBe('webgpu');
    expect(info.adapter).toBeTruthy();
  });

  it('reads tensors synchronously (dataSync) and asynchronously alike', async () => {
    const x = tf.tensor1d([1.5, -2, 3.25, 1e-7]);
    const y = tf.mul(x, 2);
    const i = tf.tensor1d([1, 2, 3], 'int32').add(1);
    expect(Array.from(y.dataSync())).toEqual([3, -4, 6.5, 2e-7].map(Math.fround));
    expect(Array.from(i.dataSync())).toEqual([2, 3, 4]);
    const z = tf.sub(y, x);
    expect(Array.from(await z.data())).toEqual([1.5, -2, 3.25, 1e-7].map(Math.fround));
    tf.dispose([x, y, i, z]);
  });

  it('adds more tensors than a shader can bind (AddN in chunks)', async () => {
    const xs = Array.from({ length: 20 }, (_, k) => tf.fill([3, 5], k + 1));
    const sum = tf.addN(xs);
    expect(Array.from(sum.dataSync())).toEqual(new Array(15).fill(210));
    tf.dispose([...xs, sum]);
  });
});

/**
 * Tolerance 3e-5 relative to each tensor's largest entry (wasm vs cpu is held to 1e-5). The GPU
 * kernels sum in another order (tiled matmuls, tree reductions for softmax/mean/sum), and the
 * shader compiler's float math (exp, fma contraction) is not bit-identical to V8's: a few float32
 * ulps per operation. Measured on Mesa 22.3 llvmpipe: logits ≤ 1.5e-6, gradients ≤ 3.7e-6 (qwen2),
 * so this leaves ~8× for other drivers; a wrong kernel (a missed transpose, a bad broadcast, an
 * unwritten output) gives errors of order 1.
 */
const PARITY_TOLERANCE = 3e-5;

describe.each<TinyCheckpointKind>(['llama-gqa-tied', 'qwen2', 'gpt2'])('%s: webgpu vs cpu', (kind) => {
  it(`logits and gradients agree within ${PARITY_TOLERANCE} relative`, async () => {
    const dir = path.join(root, kind);
    writeTinyCheckpoint(dir, kind, 2);
    await tf.setBackend('webgpu');
    const gpu = forwardBackward(dir);
    await tf.setBackend('cpu');
    const cpu = forwardBackward(dir);
    await tf.setBackend('webgpu');
    expect(relativeError(gpu.logits, cpu.logits)).toBeLessThanOrEqual(PARITY_TOLERANCE);
    for (const [name, g] of cpu.grads) {
      expect(relativeError(gpu.grads.get(name)!, g), name).toBeLessThanOrEqual(PARITY_TOLERANCE);
    }
  });
});

describe('LoRA fine-tuning on webgpu', () => {
  const modelDir = path.join(root, 'model');
  const data = path.join(root, 'reviews.jsonl');

  beforeAll(async () => {
    // The tiny base model is pre-trained on cpu (faster here, and the same for both runs).
    await tf.setBackend('cpu');
    const records = await buildTinyModel(modelDir, 120);
    fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
    await tf.setBackend('webgpu');
  });

  const config = (): FinetuneConfig => ({
    ...FINETUNE_DEFAULTS,
    model: modelDir, data, method: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'v_proj'],
    steps: 20, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 1000, checkpointEvery: 1000,
    validation: 0.1, metricExamples: 0,
  });

  async function losses(backend: 'cpu' | 'webgpu'): Promise<number[]> {
    await tf.setBackend(backend);
    const store = openStore(path.join(root, `home-${backend}`));
    const out: number[] = [];
    try {
      await runFinetune(store, config(), (e) => {
        if (e.type === 'step') out.push(e.loss);
      });
    } finally {
      store.close();
      await tf.setBackend('webgpu');
    }
    return out;
  }

  /**
   * 20 AdamW steps at lr 1e-2 with gradient clipping. Per-step float32 differences of ~1e-6
   * (PARITY_TOLERANCE) can be amplified by Adam's normalisation (g/√v) where gradients are tiny,
   * so the curves may drift apart slowly. Measured on llvmpipe: ≤ 9e-8 relative over the 20 steps;
   * 1e-5 leaves 100× for that drift on other drivers and is still 1000× below the loss change the
   * run makes (5.61 → 5.51).
   */
  it('20 steps: the loss curve matches the cpu backend within 1e-5 relative', async () => {
    const gpu = await losses('webgpu');
    const cpu = await losses('cpu');
    expect(gpu).toHaveLength(20);
    expect(cpu).toHaveLength(20);
    for (let i = 0; i < 20; i++) {
      expect(Number.isFinite(gpu[i])).toBe(true);
      expect(Math.abs(gpu[i] - cpu[i]) / cpu[i], `step ${i + 1}: webgpu ${gpu[i]} vs cpu ${cpu[i]}`).toBeLessThanOrEqual(1e-5);
    }
    // It trained: the loss went down on both.
    expect(gpu[19]).toBeLessThan(gpu[0]);
  });
});

/**
 * A Qwen2.5-0.5B-shaped model (two layers at the real width, the real 151,936-token tied vocabulary)
 * on webgpu: its embedding (544 MB in float32) exceeds the adapter's storage-binding limit (128 MB on
 * llvmpipe), so it is held in shards, gathered from and projected onto shard by shard, and the loss
 * runs in vocabulary chunks. One LoRA step's loss and gradients equal the wasm step's (1e-4).
 */
describe('webgpu at real width: weights beyond the binding limit', () => {
  it('a Qwen2.5-0.5B-shaped LoRA step matches the wasm step within 1e-4 relative, with no WebGPU error', async () => {
    const dir = writeRealShape(path.join(root, 'qwen-2-layers'), 'qwen2.5-0.5b', { layers: 2 });
    const [B, T] = [1, 48];
    const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 7919 + 11) % 151643);
    const step = async (backend: 'webgpu' | 'wasm') => {
      if (backend === 'wasm') {
        // The CPU reference in the same process: wasm with the project's kernels and the native base.
        const wasm = await startWasmBackend();
        configureNative(wasm.threads);
      }
      await tf.setBackend(backend);
      const setup = await setUpTraining({
        modelDir: dir, methodId: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
        batchSize: B, seqLen: T, seed: 0, baseDtype: 'auto', gradientCheckpointing: 'off',
      });
      const { model, attached } = setup;
      // Nonzero B so the adapters' gradients flow both ways; the same values on both backends.
      for (const [name, v] of attached.trainable) if (name.includes('lora_B')) v.assign(tf.tensor(seededValues(v.size, 7).map((x) => 0.02 * x), v.shape));
      const shardCount = model.shards.get('model.embed_tokens.weight')?.length ?? 0;
      const vars = [...attached.trainable.values()];
      const { value, grads } = tf.variableGrads(() => model.loss(tf.tensor2d(ids, [B, T], 'int32'), tf.tensor2d(ids, [B, T], 'int32')).loss, vars);
      const out = { loss: value.dataSync()[0], grads: vars.map((v) => Float32Array.from(grads[v.name].dataSync())), shardCount };
      tf.dispose([value, ...Object.values(grads)]);
      attached.detach();
      model.dispose();
      return out;
    };
    const gpu = await step('webgpu');
    const cpu = await step('wasm');
    await tf.setBackend('webgpu');
    expect(gpu.shardCount).toBeGreaterThan(1);
    expect(cpu.shardCount).toBe(0);
    expect(Math.abs(gpu.loss - cpu.loss) / cpu.loss).toBeLessThan(1e-4);
    gpu.grads.forEach((g, i) => expect(relativeError(g, cpu.grads[i])).toBeLessThan(1e-4));
    console.log(`webgpu vs wasm: loss ${gpu.loss} vs ${cpu.loss}, worst gradient error ${Math.max(...gpu.grads.map((g, i) => relativeError(g, cpu.grads[i]))).toExponential(2)}, ${gpu.shardCount} embedding shards`);
  });
});
