/**
 * GGUF-bound exports that must be refused: `lowrank export --run ID --format gguf --out DIR` on a run
 * that does not exist, has no checkpoint, or was trained on an architecture GGUF export does not
 * write, with a quantization it does not know, or into a destination that exists or cannot be made.
 * Each must exit 2 with one line naming the run, folder or setting at fault, leave nothing behind at
 * --out, and the engine call behind it (exportRun) must give the same message with the expected code;
 * where the app can ask for the same export (runs.export over the WebSocket bridge) it must get
 * `{code, message}` too.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../../core/errors.ts';
import { exportRun, type ExportRequest } from '../../core/export/run-export.ts';
import { writeTinyLlama } from '../../core/export/test-models.ts';
import { SafetensorsFile, writeSafetensors } from '../../core/io/safetensors.ts';
import { openStore } from '../../core/store/index.ts';
import { patchJson } from './broken-files.ts';
import { ALL_CASES, AppBridge, describeExpectation, expectOneLineRefusal, expectRefusal, recorded, runLowrank, scratchRoot, selectCases } from './harness.ts';

const root = scratchRoot('gguf');
const home = path.join(root, 'home');
const llama = path.join(root, 'llama');
const qwen = path.join(root, 'qwen2');
const data = path.join(root, 'pairs.jsonl');
const runs = { llama: '', qwen: '', failed: '' };
let app: AppBridge;

/**
 * The tiny Llama turned Qwen2 (q/k/v biases, Qwen2ForCausalLM) with llama3 rope scaling: a model
 * GGUF export refuses (llama.cpp's qwen2 graph has no rope_freqs tensor to carry the factors).
 */
function writeQwen2From(llamaDir: string, dir: string): void {
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(llamaDir)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(llamaDir, f), path.join(dir, f));
  patchJson(path.join(dir, 'config.json'), (c) => {
    c.architectures = ['Qwen2ForCausalLM'];
    c.model_type = 'qwen2';
    c.rope_scaling = { factor: 8, high_freq_factor: 4, low_freq_factor: 1, original_max_position_embeddings: 16, rope_type: 'llama3' };
  });
  const st = SafetensorsFile.open(path.join(llamaDir, 'model.safetensors'));
  const tensors = [...st.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, data: st.readFloat32(t.name) }));
  st.close();
  for (const t of tensors.filter((x) => /self_attn\.[qkv]_proj\.weight$/.test(x.name))) {
    tensors.push({ name: t.name.replace(/weight$/, 'bias'), shape: [t.shape[0]!], data: new Float32Array(t.shape[0]!) });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
}

async function trainOneStep(model: string, dataset: string): Promise<void> {
  const args = ['train', '--model', model, '--data', dataset, '--method', 'lora', '--steps', '1', '--batch-size', '2', '--seq-len', '32', '--checkpoint-every', '1', '--metric-examples', '0', '--json'];
  await runLowrank(home, args);
}

beforeAll(async () => {
  fs.mkdirSync(llama);
  await writeTinyLlama(llama, { tied: true, ropeScaling: null, seed: 5 });
  writeQwen2From(llama, qwen);
  const records = Array.from({ length: 6 }, (_, i) => JSON.stringify({ prompt: `The quick brown fox ${i}`, completion: ' jumps over the lazy dog.' }));
  fs.writeFileSync(data, `${records.join('\n')}\n`);
  const bad = path.join(root, 'bad.jsonl');
  fs.writeFileSync(bad, `${JSON.stringify({ prompt: 1, completion: 2 })}\n`);
  // The Llama run serves only the extended cases (see selectCases); `npm test` trains the two it needs.
  await Promise.all([trainOneStep(qwen, data), trainOneStep(llama, bad), ...(ALL_CASES ? [trainOneStep(llama, data)] : [])]);
  const store = openStore(home);
  try {
    const all = store.listRuns({ limit: 10 });
    runs.llama = all.find((r) => r.status === 'completed' && r.baseModelPath === llama)?.id ?? '';
    runs.qwen = all.find((r) => r.status === 'completed' && r.baseModelPath === qwen)?.id ?? '';
    runs.failed = all.find((r) => r.status === 'failed')?.id ?? '';
  } finally {
    store.close();
  }
  expect([runs.qwen, runs.failed, ...(ALL_CASES ? [runs.llama] : [])].every(Boolean), JSON.stringify(runs)).toBe(true);
  app = await AppBridge.start(home, root);
});
afterAll(async () => {
  await app?.close();
  fs.rmSync(root, { recursive: true, force: true });
});

interface ExportCase {
  name: string;
  /** Left out of `npm test` (see selectCases): these load a trained run before they refuse. */
  extended?: boolean;
  /** The run to export; a key of `runs` or a literal id. */
  run: keyof typeof runs | { id: string };
  /** Prepares the destination; returns the --out path. */
  out(dir: string): string;
  quant?: string;
  format?: string;
  code: ErrorCode;
  /** `{run}` stands for the run id, `{out}` for --out, `{parent}` for its folder, `{model}` for the run's model folder. */
  mentions: string[];
  /** The app can ask for this export (its destination is always a fresh folder under exports/). */
  inApp?: boolean;
}

const MISSING_RUN = '20990101-000000-dead';
/** What export prints on stderr while it works, before any refusal. */
const EXPORT_PROGRESS = [/^loading run [0-9A-Za-z-]+$/];

const cases: ExportCase[] = [
  {
    name: 'a run that does not exist',
    run: { id: MISSING_RUN },
    out: (dir) => path.join(dir, 'out'),
    code: 'RUN_NOT_FOUND',
    mentions: [`no run with id "${MISSING_RUN}"`, 'lowrank runs list'],
    inApp: true,
  },
  {
    name: 'an --out folder that already exists',
    run: 'qwen',
    out: (dir) => {
      fs.mkdirSync(path.join(dir, 'out'), { recursive: true });
      return path.join(dir, 'out');
    },
    code: 'BAD_ARGUMENT',
    mentions: ['{out} already exists', 'choose another --out'],
  },
  {
    name: 'a model GGUF export refuses (Qwen2 with llama3 rope scaling)',
    run: 'qwen',
    out: (dir) => path.join(dir, 'out'),
    code: 'UNKNOWN_ARCHITECTURE',
    mentions: ['{model}: llama3 rope scaling on a Qwen2 model has no GGUF form'],
    inApp: true,
  },
  {
    name: 'a quantization GGUF export does not write (q4_k)',
    extended: true,
    run: 'llama',
    out: (dir) => path.join(dir, 'out'),
    quant: 'q4_k',
    code: 'BAD_ARGUMENT',
    mentions: ['"q4_k" is not supported', 'f32, f16, q8_0, q4_0, q4_K_M'],
  },
  {
    name: 'a run that failed before its first checkpoint',
    run: 'failed',
    out: (dir) => path.join(dir, 'out'),
    code: 'FILE_NOT_FOUND',
    mentions: ['run {run} has no checkpoint'],
  },
  {
    name: 'an --out whose parent folder does not exist',
    extended: true,
    run: 'llama',
    out: (dir) => path.join(dir, 'no-such-folder', 'out'),
    code: 'FILE_NOT_FOUND',
    mentions: ['the folder {parent} does not exist', 'choose another --out'],
  },
];

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

describe.concurrent('refused GGUF exports: exit 2, one line naming the run or folder; nothing left at --out', () => {
  it.each(selectCases(cases))('$name', async (c) => {
    await recorded({ group: 'GGUF exports', name: c.name, expected: describeExpectation(c.code, c.mentions) }, async () => {
      const dir = path.join(root, slug(c.name));
      fs.mkdirSync(dir);
      const out = c.out(dir);
      const runId = typeof c.run === 'string' ? runs[c.run] : c.run.id;
      const model = c.run === 'qwen' ? qwen : llama;
      const mentions = c.mentions.map((m) => m.replace('{run}', runId).replace('{out}', out).replace('{model}', model).replace('{parent}', path.dirname(out)));
      const existedBefore = fs.existsSync(out);
      const args = ['export', '--run', runId, '--format', c.format ?? 'gguf', '--out', out];
      if (c.quant) args.push('--quant', c.quant);
      const message = expectOneLineRefusal(await runLowrank(home, args), 'export', mentions, EXPORT_PROGRESS);
      expect(fs.existsSync(out), 'nothing is left at --out').toBe(existedBefore);
      if (fs.existsSync(path.dirname(out))) {
        expect(fs.readdirSync(path.dirname(out)).filter((f) => f.includes('.partial-')), 'no partial folder').toEqual([]);
      }

      // The engine call behind the command: same message, and the code.
      const store = openStore(home);
      try {
        const request: ExportRequest = { runId, format: 'gguf', out, quant: (c.quant ?? 'f16') as ExportRequest['quant'] };
        const refusal = await expectRefusal(() => exportRun(store, request), c.code, mentions);
        expect(refusal.message).toBe(message);
      } finally {
        store.close();
      }
      if (c.inApp) {
        // The app's Export button: its destination is always fresh, so only the run can be at fault.
        const refusal = await expectRefusal(() => app.call('runs.export', { runId, format: 'gguf', quant: 'f16' }), c.code, mentions.filter((m) => !m.includes(out)));
        expect(refusal.message).not.toContain('internal error');
      }
      return `exit 2: ${message}`;
    });
  });

  it('a misspelt --format (ggfu) is refused before the run is loaded', async () => {
    const mentions = ['--format must be peft, merged or gguf', 'got "ggfu"'];
    await recorded({ group: 'GGUF exports', name: 'a misspelt --format (ggfu)', expected: describeExpectation('BAD_ARGUMENT', mentions) }, async () => {
      const out = path.join(root, 'misspelt-out');
      const message = expectOneLineRefusal(await runLowrank(home, ['export', '--run', runs.qwen, '--format', 'ggfu', '--out', out]), 'export', mentions);
      expect(fs.existsSync(out)).toBe(false);
      return `exit 2: ${message}`;
    });
  });
});
