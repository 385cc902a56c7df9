/**
 * Bad PEFT adapter folders, as `lowrank logits --adapter DIR` meets them: each case breaks one thing
 * in a valid LoRA adapter for a tiny Llama and expects exit 2 with one line naming the adapter file
 * (or folder) and the module or field at fault. The engine calls behind the command (readPeftAdapter,
 * then applyPeftAdapter on the loaded base) must give the same message with the expected code. The app
 * takes no adapter folder from the user, so there is no service call to check here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../../core/errors.ts';
import { initBackend } from '../../core/backend/index.ts';
import { applyPeftAdapter, readPeftAdapter } from '../../core/export/peft.ts';
import { writeSafetensors } from '../../core/io/safetensors.ts';
import type { CausalLM } from '../../core/models/causal-lm.ts';
import { loadModel } from '../../core/models/load.ts';
import { writeTinyCheckpoint } from '../fixtures/tiny-checkpoints.ts';
import { patchJson } from './broken-files.ts';
import { ALL_CASES, describeExpectation, expectOneLineRefusal, expectRefusal, recorded, runLowrank, scratchRoot, selectCases } from './harness.ts';

const root = scratchRoot('peft');
const home = path.join(root, 'home');
const base = path.join(root, 'base');
let model: CausalLM;
beforeAll(async () => {
  // llama-gqa-tied: hidden 32, 4 query heads and 2 key/value heads of 8, 2 layers.
  writeTinyCheckpoint(base, 'llama-gqa-tied', 3);
  await initBackend();
  model = loadModel(base);
});
afterAll(() => {
  model?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

const R = 4;
/** module path -> [out, in] in the tiny base. */
const MODULES: Record<string, [number, number]> = {
  'model.layers.0.self_attn.q_proj': [32, 32],
  'model.layers.0.self_attn.v_proj': [16, 32],
  'model.layers.1.self_attn.q_proj': [32, 32],
  'model.layers.1.self_attn.v_proj': [16, 32],
};

interface AdapterTensor {
  name: string;
  shape: number[];
}

/** A valid LoRA adapter's tensors (names as peft saves them), before any damage. */
function loraTensors(): AdapterTensor[] {
  return Object.entries(MODULES).flatMap(([m, [out, inFeatures]]) => [
    { name: `base_model.model.${m}.lora_A.weight`, shape: [R, inFeatures] },
    { name: `base_model.model.${m}.lora_B.weight`, shape: [out, R] },
  ]);
}

function writeAdapter(dir: string, tensors: AdapterTensor[], config: Record<string, unknown> = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  const adapterConfig = { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: R, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'], use_dora: false, bias: 'none', ...config };
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), `${JSON.stringify(adapterConfig, null, 2)}\n`);
  writeSafetensors(
    path.join(dir, 'adapter_model.safetensors'),
    tensors.map((t) => ({ name: t.name, shape: t.shape, data: new Float32Array(t.shape.reduce((a, b) => a * b, 1)).fill(0.01) })),
    { format: 'pt' },
  );
}

interface AdapterCase {
  /** Left out of `npm test` (see selectCases). */
  extended?: boolean;
  name: string;
  /** Writes the broken adapter into `dir`; returns the file the message must name (default: the folder). */
  make(dir: string): string | void;
  code: ErrorCode;
  mentions: Array<string | RegExp>;
}

const configOf = (dir: string) => path.join(dir, 'adapter_config.json');
const weightsOf = (dir: string) => path.join(dir, 'adapter_model.safetensors');
const withConfig = (patch: Record<string, unknown>) => (dir: string) => (writeAdapter(dir, loraTensors(), patch), configOf(dir));

const cases: AdapterCase[] = [
  {
    name: 'adapter_config.json missing',
    make: (dir) => (writeAdapter(dir, loraTensors()), fs.rmSync(configOf(dir)), configOf(dir)),
    code: 'FILE_NOT_FOUND',
    mentions: ['not found', 'not a PEFT adapter folder'],
  },
  {
    name: 'adapter_config.json not JSON',
    extended: true,
    make: (dir) => (writeAdapter(dir, loraTensors()), fs.writeFileSync(configOf(dir), '{\n  "peft_type": "LORA",\n  "r": 4,,\n}'), configOf(dir)),
    code: 'BAD_CONFIG',
    mentions: ['not valid JSON', 'line 3 column 10'],
  },
  {
    name: 'unknown peft_type (IA3)',
    make: withConfig({ peft_type: 'IA3' }),
    code: 'BAD_CONFIG',
    mentions: ['peft_type "IA3" is not supported', 'LORA'],
  },
  {
    name: 'r is zero',
    extended: true,
    make: withConfig({ r: 0 }),
    code: 'BAD_CONFIG',
    mentions: ['field "r"', 'positive integer', 'got 0'],
  },
  {
    name: 'adapter_model.safetensors missing',
    extended: true,
    make: (dir) => (writeAdapter(dir, loraTensors()), fs.rmSync(weightsOf(dir)), weightsOf(dir)),
    code: 'FILE_NOT_FOUND',
    mentions: ['not found', 'incomplete'],
  },
  {
    name: 'only a pickled adapter_model.bin',
    make: (dir) => {
      writeAdapter(dir, loraTensors());
      fs.renameSync(weightsOf(dir), path.join(dir, 'adapter_model.bin'));
      return path.join(dir, 'adapter_model.bin');
    },
    code: 'PICKLE_REFUSED',
    mentions: ['PyTorch pickle', 'arbitrary code'],
  },
  {
    name: 'adapter weights truncated',
    extended: true,
    make: (dir) => (writeAdapter(dir, loraTensors()), fs.truncateSync(weightsOf(dir), fs.statSync(weightsOf(dir)).size - 40), weightsOf(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['truncated'],
  },
  {
    name: 'a module with lora_A but no lora_B',
    make: (dir) => (writeAdapter(dir, loraTensors().filter((t) => t.name !== 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight')), weightsOf(dir)),
    code: 'MISSING_WEIGHT',
    mentions: ['model.layers.1.self_attn.v_proj', 'has lora_A but no lora_B'],
  },
  {
    name: 'shapes for another model (hidden 64, not 32)',
    make: (dir) => {
      writeAdapter(dir, loraTensors().map((t) => (t.name.endsWith('lora_A.weight') ? { ...t, shape: [R, 64] } : t)));
    },
    code: 'SHAPE_MISMATCH',
    mentions: ['model.layers.0.self_attn.q_proj', 'lora_A is [4, 64]', 'another base model'],
  },
  {
    name: 'a layer the base model does not have (layer 7)',
    make: (dir) => {
      const extra = [`base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight`, `base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight`];
      writeAdapter(dir, [...loraTensors(), { name: extra[0]!, shape: [R, 32] }, { name: extra[1]!, shape: [32, R] }]);
    },
    code: 'SHAPE_MISMATCH',
    mentions: ['model.layers.7.self_attn.q_proj', 'another base model'],
  },
  {
    name: 'tensor rank 4 but config r = 8',
    extended: true,
    make: (dir) => (writeAdapter(dir, loraTensors(), { r: 8 }), weightsOf(dir)),
    code: 'SHAPE_MISMATCH',
    mentions: ['has rank 4 but the config says r = 8'],
  },
  {
    name: 'use_dora true without magnitude vectors',
    make: (dir) => (writeAdapter(dir, loraTensors(), { use_dora: true }), weightsOf(dir)),
    code: 'MISSING_WEIGHT',
    mentions: ['no lora_magnitude_vector but use_dora is true'],
  },
  {
    name: 'a tensor key without the base_model.model. prefix',
    extended: true,
    make: (dir) => (writeAdapter(dir, [...loraTensors(), { name: 'model.layers.0.self_attn.q_proj.lora_A.weight', shape: [R, 32] }]), weightsOf(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['"model.layers.0.self_attn.q_proj.lora_A.weight"', 'keys must start with "base_model.model."'],
  },
  {
    name: 'lora_alpha a string',
    extended: true,
    make: (dir) => {
      writeAdapter(dir, loraTensors());
      patchJson(configOf(dir), (c) => (c.lora_alpha = '16'));
      return configOf(dir);
    },
    code: 'BAD_CONFIG',
    mentions: ['field "lora_alpha"', 'a number', 'got "16"'],
  },
];

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

describe.concurrent('bad PEFT adapters: `lowrank logits --adapter` exits 2 with one line naming the file and module', () => {
  it.each(selectCases(cases))('$name', async (c) => {
    await recorded({ group: 'PEFT adapters', name: c.name, expected: describeExpectation(c.code, c.mentions) }, async () => {
      const dir = path.join(root, slug(c.name));
      const named = c.make(dir) ?? dir;
      const mentions = [named, ...c.mentions];
      const r = await runLowrank(home, ['logits', '--model', base, '--adapter', dir, '--ids', '1,2']);
      const message = expectOneLineRefusal(r, 'logits', mentions);
      // The engine calls behind --adapter: same message, and the code.
      const refusal = await expectRefusal(() => applyPeftAdapter(model, readPeftAdapter(dir)).detach(), c.code, mentions);
      expect(refusal.message).toBe(message);
      return `exit 2: ${message}`;
    });
  });

  it('the undamaged adapter loads (the cases above differ from it in one thing)', async () => {
    const dir = path.join(root, 'valid');
    writeAdapter(dir, loraTensors());
    const applied = applyPeftAdapter(model, readPeftAdapter(dir));
    expect(applied.modules).toHaveLength(4);
    applied.detach();
    if (ALL_CASES) {
      const r = await runLowrank(home, ['logits', '--model', base, '--adapter', dir, '--ids', '1,2', '--json']);
      expect(r.status, r.stderr).toBe(0);
    }
  });
});
