/**
 * The playground job on a short LoRA run of a tiny model: the conversation goes through the chat
 * template (system prompt first), answers stream as growing prefixes ending at the reply, the base
 * model answers too when asked, a stop request ends the answer within a token, and the contract
 * refuses settings beyond the limits the page shows, naming the field.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../backend/index.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig } from '../train/finetune.ts';
import { openStore } from '../store/index.ts';
import type { RunStore } from '../store/store.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { RESOURCES_DIR } from '../resources.ts';
import { buildTinyModel } from '../../test/fixtures/tiny-trained-model.ts';
import { PLAYGROUND_LIMITS, type Request } from '../contract.ts';
import { StudioService } from '../service.ts';
import { playgroundAnswer } from './playground.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-playground-'));
const model = path.join(root, 'tiny');
const home = path.join(root, 'home');
let store: RunStore;
let runId = '';

beforeAll(async () => {
  await initBackend();
  await buildTinyModel(model);
  store = openStore(home);
  const config: FinetuneConfig = {
    ...FINETUNE_DEFAULTS,
    model, data: path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'), method: 'lora', params: { rank: 2 }, targets: ['q_proj', 'v_proj'],
    steps: 2, epochs: null, batchSize: 2, seqLen: 48, lr: 1e-2, evalEvery: 2, checkpointEvery: 2, metricExamples: 0,
  };
  runId = (await runFinetune(store, config, () => {})).runId;
}, 120_000);
afterAll(() => {
  store?.close();
  fs.rmSync(root, { recursive: true, force: true });
});

function request(overrides: Partial<Request<'playground.generate'>> = {}): Request<'playground.generate'> {
  return {
    runId, requestId: 'r1', system: 'Answer in one word.',
    messages: [
      { role: 'user', content: 'Is this review positive? Great film.' },
      { role: 'assistant', content: 'positive' },
      { role: 'user', content: 'And this one? Boring.' },
    ],
    seed: 1, maxNewTokens: 24, temperature: 1.5, topP: 1, topK: 0, compareBase: false, ...overrides,
  };
}

describe('playground job', () => {
  it('renders the conversation through the chat template and streams growing prefixes of the answer', async () => {
    const streamed: Array<{ source: string; text: string }> = [];
    const reply = await playgroundAnswer(store, request({ compareBase: true }), { stream: (source, text) => streamed.push({ source, text }), shouldStop: () => false });
    const tokenizer = await loadTokenizer(model);
    const expected = tokenizer.encode(
      tokenizer.applyChatTemplate([{ role: 'system', content: 'Answer in one word.' }, ...request().messages], { addGenerationPrompt: true }),
      { addSpecialTokens: false },
    );
    expect(reply.promptTokens).toBe(expected.length);
    expect(reply.stopped).toBe(false);
    const adapted = streamed.filter((s) => s.source === 'adapted').map((s) => s.text);
    const base = streamed.filter((s) => s.source === 'base').map((s) => s.text);
    expect(adapted[adapted.length - 1]).toBe(reply.adapted);
    expect(base[base.length - 1]).toBe(reply.base);
    for (const texts of [adapted, base]) {
      expect(texts.length).toBeGreaterThanOrEqual(2);
      for (let i = 1; i < texts.length; i++) expect(texts[i]!.startsWith(texts[i - 1]!)).toBe(true);
    }
    expect(reply.adapted.length).toBeGreaterThan(0);
  }, 60_000);

  it('stops within a token of a stop request and skips the base answer', async () => {
    let streams = 0;
    const full = await playgroundAnswer(store, request({ maxNewTokens: 40 }), { stream: () => {}, shouldStop: () => false });
    const reply = await playgroundAnswer(store, request({ maxNewTokens: 40, compareBase: true }), { stream: () => streams++, shouldStop: () => streams >= 1 });
    expect(reply.stopped).toBe(true);
    expect(reply.base).toBeNull();
    // The first token streams at once and the stop is seen after it: a one-token prefix of the full answer.
    expect(full.adapted.startsWith(reply.adapted)).toBe(true);
    expect(reply.adapted.length).toBeLessThan(full.adapted.length);
  }, 60_000);
});

describe('playground requests at the service edge', () => {
  const service = new StudioService({ home: path.join(root, 'service-home'), transport: 'websocket', fileDialog: false });
  afterAll(() => service.close());
  const refusal = (r: unknown) => service.call('playground.generate', r).then(() => null, (e: { code: string; message: string }) => e);

  it('refuses values beyond the limits the page shows, naming the field', async () => {
    const big = await refusal(request({ maxNewTokens: PLAYGROUND_LIMITS.maxNewTokens + 1 }));
    expect(big?.code).toBe('BAD_ARGUMENT');
    expect(big?.message).toMatch(/^playground\.generate: maxNewTokens: .*512/);
    expect((await refusal(request({ temperature: 2.5 })))?.message).toMatch(/temperature: .*2/);
    expect((await refusal(request({ topK: 1001 })))?.message).toMatch(/topK/);
    expect((await refusal(request({ topP: 0 })))?.message).toMatch(/topP/);
    const last = await refusal(request({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] }));
    expect(last?.message).toMatch(/messages: the last message must be a non-empty user message/);
  });

  it('answers a stop for an unknown request with stopped: false', async () => {
    expect(await service.call('playground.stop', { requestId: 'nothing-running' })).toEqual({ stopped: false });
  });
});
