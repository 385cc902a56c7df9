/** The wizard's starting settings: learning rate by model size and method family, targets by method, never another method's. */
import { describe, expect, it } from 'vitest';
import { listMethods } from '../methods/index.ts';
import { adapterLearningRate, defaultAdapterTargets, recommendedSettings } from './recommend.ts';

const llamaModules = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const bundled = { parameters: 3_950_848, maxPositions: 512, targetableModules: llamaModules };

describe('recommended settings', () => {
  it('gives the bundled model the rate its report trains at, and large models LoRA\'s 2e-4', () => {
    expect(adapterLearningRate(bundled.parameters)).toBe(3e-3);
    expect(adapterLearningRate(135e6)).toBe(1e-3);
    expect(adapterLearningRate(1.5e9)).toBe(4e-4);
    expect(adapterLearningRate(7e9)).toBe(2e-4);
  });

  it('scales the rate by family and picks q, k, v, o for adapters, the paper\'s targets for the optimizers', () => {
    const byId = new Map(listMethods().map((m) => [m.id, m]));
    expect(recommendedSettings(byId.get('lora')!, bundled)).toMatchObject({ lr: 3e-3, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
    expect(recommendedSettings(byId.get('full')!, bundled).lr).toBe(3e-4);
    expect(recommendedSettings(byId.get('galore')!, bundled)).toMatchObject({ lr: 1e-3, targets: byId.get('galore')!.defaultTargets });
    expect(recommendedSettings(byId.get('galore-dct')!, bundled).lr).toBe(3e-4);
    expect(recommendedSettings(byId.get('vera')!, bundled).lr).toBe(3e-2);
    // GPT-2 names its attention c_attn / c_proj: every linear layer then.
    expect(defaultAdapterTargets(['c_attn', 'c_proj', 'c_fc'])).toBe('all-linear');
  });
});
