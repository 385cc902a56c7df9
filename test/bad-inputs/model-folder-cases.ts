/**
 * The runner the bad model-folder catalogues share (safetensors.test.ts, config-json.test.ts): each
 * case breaks one thing in a tiny valid folder, runs `lowrank inspect --model DIR` (or `logits`, for
 * damage only reading the weights finds), and expects exit 2 with one line naming the file and the
 * place; the app's "pick a model folder" call (models.inspect over the WebSocket bridge) must give
 * the same message as `{code, message}`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../../core/errors.ts';
import { CheckpointReader } from '../../core/io/safetensors.ts';
import { expectedWeights } from '../../core/models/config.ts';
import { loadConfig } from '../../core/models/load.ts';
import { writeTinyCheckpoint, type TinyCheckpointKind } from '../fixtures/tiny-checkpoints.ts';
import { patchJson } from './broken-files.ts';
import { AppBridge, describeExpectation, expectOneLineRefusal, expectRefusal, recorded, runLowrank, scratchRoot, selectCases } from './harness.ts';

export interface FolderCase {
  name: string;
  /** Left out of `npm test` (see selectCases). */
  extended?: boolean;
  /** Tiny checkpoint to break (default llama-gqa-tied: hidden 32, 4 heads of 8, 2 key/value heads). */
  kind?: TinyCheckpointKind;
  /** Damages the tiny folder `dir`; returns the file the message must name (default: the folder). */
  damage(dir: string): string | void;
  code: ErrorCode;
  mentions: Array<string | RegExp>;
  /** The --model argument when it is not the folder itself. */
  modelArg?(dir: string): string;
  /** 'logits' where only reading the weights finds the damage (inspect reads headers only). */
  command?: 'inspect' | 'logits';
}

export const weightsFile = (dir: string) => path.join(dir, 'model.safetensors');
export const configFile = (dir: string) => path.join(dir, 'config.json');

/** A damage that sets (or, with undefined, deletes) config.json fields; names config.json. */
export const setConfig = (patch: Record<string, unknown>) => (dir: string) => {
  patchJson(configFile(dir), (c) => {
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) delete c[k];
      else c[k] = v;
    }
  });
  return configFile(dir);
};

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

/** What loading reads: every weight config.json implies, as float32. */
function readEveryWeight(dir: string): void {
  const names = [...expectedWeights(loadConfig(dir)).keys()];
  const reader = CheckpointReader.open(dir);
  try {
    for (const name of names) reader.readFloat32(name);
  } finally {
    reader.close();
  }
}

/** Registers the catalogue `cases` of `group` (its scratch folder, app bridge and one concurrent test per case). */
export function describeFolderCases(group: 'safetensors' | 'config.json', cases: FolderCase[]): { root: string } {
  const root = scratchRoot(slug(group));
  const home = path.join(root, 'home');
  let app: AppBridge;
  beforeAll(async () => {
    app = await AppBridge.start(home, root);
  });
  afterAll(async () => {
    await app?.close();
    fs.rmSync(root, { recursive: true, force: true });
  });

  describe.concurrent(`bad model folders (${group}): exit 2, one line naming the file; the app gets {code, message}`, () => {
    it.each(selectCases(cases))('$name', async (c) => {
      await recorded({ group, name: c.name, expected: describeExpectation(c.code, c.mentions) }, async () => {
        const dir = path.join(root, slug(c.name));
        writeTinyCheckpoint(dir, c.kind ?? 'llama-gqa-tied', 3);
        const named = c.damage(dir) ?? dir;
        const model = c.modelArg?.(dir) ?? dir;
        const mentions = [named, ...c.mentions];
        const command = c.command ?? 'inspect';
        const args = command === 'inspect' ? ['inspect', '--model', model] : ['logits', '--model', model, '--ids', '1,2'];
        const message = expectOneLineRefusal(await runLowrank(home, args), command, mentions);
        if (command === 'inspect') {
          // The app's model-folder pick: the same reader, the same message, as {code, message}.
          const refusal = await expectRefusal(() => app.call('models.inspect', { path: model }), c.code, mentions);
          expect(refusal.message).toBe(message);
        } else {
          // No app call reads every weight; the engine call behind `logits` does.
          await expectRefusal(() => readEveryWeight(model), c.code, mentions);
        }
        return `exit 2: ${message}`;
      });
    });
  });
  return { root };
}
