// The fused AdamW step on wasm (native addon) against the same optimizer's tfjs ops: bit for bit
// on wasm (same float32 arithmetic in the same order), and within float32 tolerance of cpu, over
// several steps with weight decay, a no-decay parameter and per-parameter lr scales; the tfjs ops
// again without the addon.
import * as tf from '../tf.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';
import { nativeAddon, nativeSwitch } from './native/addon.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { ADAMW_KERNEL } from './adamw-kernels.ts';
import { AdamW } from '../optim/adamw.ts';
import { fusedOpActive, setFusedOps } from '../models/fused-ops.ts';

const native = nativeAddon();
const SHAPES: Record<string, number[]> = { w: [33, 17], bias: [7], norm: [1] };

/** Parameters after `steps` AdamW steps on seeded gradients, on the active backend. */
function train(steps: number): Map<string, Float32Array> {
  const params = new Map(Object.entries(SHAPES).map(([name, shape], i) => {
    const initial = seededTensor(shape, i + 1);
    const p = tf.variable(initial, true, `adamw-test-${name}-${Math.random()}`);
    initial.dispose();
    return [name, p];
  }));
  const opt = new AdamW(params, { weightDecay: 0.1, noDecay: (n) => n === 'norm', lrScale: (n) => (n === 'bias' ? 4 : 1) });
  for (let s = 0; s < steps; s++) {
    const grads = new Map([...params].map(([name, p], i) => [name, tf.tidy(() => tf.mul(seededTensor(p.shape, 100 + 10 * s + i), s + 1))]));
    opt.step(grads, 0.01);
    tf.dispose([...grads.values()]);
  }
  const out = new Map([...params].map(([name, p]) => [name, p.dataSync() as Float32Array]));
  opt.dispose();
  tf.dispose([...params.values()]);
  return out;
}

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});
afterAll(() => {
  nativeSwitch.enabled = true;
  setFusedOps(true);
});

{
  describe('fused AdamW on wasm', needs('native'), () => {

    it('gives bit-identical parameters to the tfjs ops on wasm after 4 steps, and runs one kernel per parameter', async () => {
      expect(fusedOpActive('adamW')).toBe(true);
      const profile = await tf.profile(() => {
        train(1);
      });
      expect(profile.kernels.filter((k) => k.name === ADAMW_KERNEL)).toHaveLength(Object.keys(SHAPES).length);
      const fused = train(4);
      setFusedOps(false);
      const composite = train(4);
      setFusedOps(true);
      for (const [name, values] of fused) expect(values).toEqual(composite.get(name));
    });

    it('matches the cpu backend within float32 tolerance', async () => {
      const wasm = train(4);
      await tf.setBackend('cpu');
      const cpu = train(4);
      await tf.setBackend('wasm');
      for (const [name, values] of wasm) {
        const ref = cpu.get(name)!;
        const worst = Math.max(...values.map((x, i) => Math.abs(x - ref[i]) / Math.max(1e-3, Math.abs(ref[i]))));
        expect(worst).toBeLessThan(1e-5);
      }
    });

    it('runs the tfjs ops without the native addon', async () => {
      nativeSwitch.enabled = false;
      try {
        expect(fusedOpActive('adamW')).toBe(false);
        const profile = await tf.profile(() => {
          train(1);
        });
        expect(profile.kernels.map((k) => k.name)).not.toContain(ADAMW_KERNEL);
      } finally {
        nativeSwitch.enabled = true;
      }
    });

    it('leaks no tensors', () => {
      train(1);
      const before = tf.memory().numTensors;
      train(2);
      expect(tf.memory().numTensors).toBe(before);
    });
  });
}
