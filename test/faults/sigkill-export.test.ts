/**
 * Fault injection: `lowrank export --format peft|merged` SIGKILLed at seeded random moments and
 * right before its folder is renamed into place (LOWRANK_FAULT_PAUSE_MS holds the finished temporary
 * folder there, core/export/destination.ts). After each kill the --out folder is absent or byte for
 * byte the uninterrupted export, the store is sound and the run still completed; exporting again to
 * the same --out succeeds, gives the same bytes and removes the dead export's temporary folder.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../../core/backend/index.ts';
import { openStore } from '../../core/store/index.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig } from '../../core/train/finetune.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';
import { CliProcess, FAULT_SEED, checked, expectStoreSound, folderContents, seededRandom } from './harness.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-faults-export-'));
const modelDir = path.join(root, 'model');
const data = path.join(root, 'reviews.jsonl');
const home = path.join(root, 'home');
const exports = path.join(root, 'exports');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const FORMATS = ['peft', 'merged'] as const;
type Format = (typeof FORMATS)[number];
const KILLS = 4;

let runId: string;
const reference = new Map<Format, { files: Map<string, Buffer>; wallMs: number }>();

function startExport(format: Format, out: string, env: NodeJS.ProcessEnv = {}): CliProcess {
  return new CliProcess(['export', '--run', runId, '--format', format, '--out', out, '--json'], { LOWRANK_HOME: home, ...env });
}

beforeAll(async () => {
  await initBackend();
  const records = await buildTinyModel(modelDir);
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  fs.mkdirSync(exports);
  // The run to export, trained in this process (the kills are of export processes only).
  const store = openStore(home);
  const config: FinetuneConfig = {
    ...FINETUNE_DEFAULTS,
    model: modelDir, data, method: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'v_proj'],
    steps: 6, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 3, metricExamples: 0,
  };
  runId = (await runFinetune(store, config, () => {})).runId;
  store.close();
  for (const format of FORMATS) {
    const out = path.join(root, `reference-${format}`);
    const child = startExport(format, out);
    const exit = await child.exited;
    expect(exit.code, child.stderr).toBe(0);
    reference.set(format, { files: folderContents(out), wallMs: exit.wallMs });
  }
});

describe('SIGKILL of lowrank export', () => {
  it(`leaves the --out folder whole or absent through ${KILLS} kills (seed ${FAULT_SEED}), and exporting again completes`, async () => {
    const random = seededRandom(FAULT_SEED + 1);
    let beforeRename = 0;
    let kills = 0;
    for (let i = 0; kills < KILLS && i < 2 * KILLS; i++) {
      const format = FORMATS[i % 2];
      const name = `kill-${i}-${format}`;
      const out = path.join(exports, name);
      const partials = () => fs.readdirSync(exports).filter((e) => e.startsWith(`.${name}.partial-`));
      // Half the kills at a random time over an export's duration, half right before the rename (one of each format).
      const atRename = i % 4 === 1 || i % 4 === 2;
      const delay = Math.round(0.9 * random() * reference.get(format)!.wallMs);
      const aim = atRename ? 'with the finished temporary folder not yet renamed' : `${delay} ms after spawn`;
      const child = startExport(format, out, atRename ? { LOWRANK_FAULT_PAUSE_MS: '300' } : {});
      if (atRename) child.killWhen(() => partials().length > 0);
      else child.killAfter(delay);
      const exit = await child.exited;
      if (exit.signal === 'SIGKILL') kills++;
      const context = `kill ${i + 1} (${format}, aimed ${aim}, killed after ${Math.round(child.killedAfterMs ?? -1)} ms)`;
      const leftovers = partials();
      let landed = '';
      checked(
        (passed, outcome) => recordOutcome({
          suite: 'faults', group: 'SIGKILL export', name: `kill ${i + 1}: ${format} export, ${aim}`,
          expected: '--out absent or identical to the uninterrupted export; store sound; exporting again gives the same bytes and removes the temporary folder',
          outcome, passed,
        }),
        () => `${exit.signal === 'SIGKILL' ? `killed after ${Math.round(child.killedAfterMs!)} ms` : `exited ${exit.code} before the kill`}: ${landed}`,
        () => {
          if (exit.signal !== 'SIGKILL') expect(exit.code, `${context}: ${child.stderr}`).toBe(0);
          const expected = reference.get(format)!.files;
          if (fs.existsSync(out)) {
            expect(folderContents(out), context).toEqual(expected);
            landed = `--out complete (identical to the reference), ${leftovers.length} temporary folder(s)`;
          } else {
            landed = `no --out, ${leftovers.length} temporary folder(s) left`;
          }
          if (atRename && exit.signal === 'SIGKILL') {
            expect(fs.existsSync(out), `${context}: the kill came before the rename`).toBe(false);
            expect(leftovers.length, context).toBe(1);
            beforeRename++;
          }
          const store = openStore(home);
          try {
            expectStoreSound(store, context);
            expect(store.getRun(runId).status).toBe('completed');
            // An export the store lists is there, whole.
            for (const artifact of store.artifacts(runId)) expect(folderContents(artifact.path), context).toEqual(reference.get(artifact.kind as Format)!.files);
          } finally {
            store.close();
          }
        },
      );
      if (fs.existsSync(out)) continue;
      const again = startExport(format, out);
      const againExit = await again.exited;
      checked(
        (passed, outcome) => recordOutcome({ suite: 'faults', group: 'SIGKILL export', name: `export again after kill ${i + 1}`, expected: 'exit 0, the reference bytes, no temporary folder left', outcome, passed }),
        () => `exit ${againExit.code}, ${partials().length} temporary folder(s) left`,
        () => {
          expect(againExit.code, `${context}, export again: ${again.stderr}`).toBe(0);
          expect(folderContents(out), context).toEqual(reference.get(format)!.files);
          // The dead export's temporary folder went with the next export to the same place.
          expect(partials(), context).toEqual([]);
        },
      );
    }
    expect(kills).toBe(KILLS);
    expect(beforeRename).toBeGreaterThanOrEqual(2);
  }, 300_000);
});
