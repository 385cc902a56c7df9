/** `lowrank logits`, `generate` and `eval`: a model folder in, numbers or text out. */
import { readOnlyLoadOptions } from '../train/setup.ts';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { LowrankError } from '../errors.ts';
import { loadModel } from '../models/load.ts';
import { readJsonFile } from '../io/hf-folder.ts';
import { applyPeftAdapter, readPeftAdapter } from '../export/peft.ts';
import { generate } from '../models/generate.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { validationLoss } from '../train/evaluate.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { readTextCorpus } from '../data/text-corpus.ts';
import { ProgressBar } from '../progress.ts';
import type { Flags } from '../cli.ts';
import { numberFlag, printJson, requireString } from './flags.ts';

function parseIds(raw: string, vocabSize: number): number[] {
  const ids = raw.split(',').map((s) => s.trim());
  return ids.map((s, i) => {
    const id = Number(s);
    if (s === '' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new LowrankError('BAD_ARGUMENT', `--ids: item ${i + 1} ("${s}") is not a token id in [0, ${vocabSize})`);
    }
    return id;
  });
}

/** --model, plus --adapter (a PEFT LoRA/DoRA folder) applied on top when given. */
async function loadModelFlag(flags: Flags): Promise<{ dir: string; model: CausalLM }> {
  const dir = requireString(flags, 'model', 'a Hugging Face model folder');
  await initBackend();
  const model = loadModel(dir, readOnlyLoadOptions());
  if (typeof flags.adapter === 'string') applyPeftAdapter(model, readPeftAdapter(flags.adapter));
  return { dir, model };
}

export async function logitsCommand(flags: Flags): Promise<void> {
  const { model } = await loadModelFlag(flags);
  const ids = parseIds(requireString(flags, 'ids', 'comma-separated token ids, e.g. 1,2,3'), model.config.vocabSize);
  if (ids.length > model.config.maxPositions) {
    throw new LowrankError('BAD_ARGUMENT', `--ids: ${ids.length} tokens exceed the model's ${model.config.maxPositions} positions`);
  }
  const logitsTensor = tf.tidy(() => model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')).logits.reshape([ids.length, model.config.vocabSize]));
  const logits = logitsTensor.arraySync() as number[][];
  logitsTensor.dispose();
  const result = { shape: [ids.length, model.config.vocabSize], logits };
  if (flags.json) return printJson(result);
  for (let t = 0; t < ids.length; t++) {
    const row = logits[t];
    const top = [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, 5);
    console.log(`position ${t} (id ${ids[t]}): top ${top.map((i) => `${i}:${row[i].toFixed(3)}`).join(' ')}`);
  }
}

/** Sampling defaults from generation_config.json (greedy when it says do_sample: false). */
function generationDefaults(dir: string): { temperature: number; topP: number } {
  const file = path.join(dir, 'generation_config.json');
  const fallback = { temperature: 0.8, topP: 0.95 };
  if (!fs.existsSync(file)) return fallback;
  const raw = readJsonFile(file, 'generation config') as Record<string, unknown>;
  if (raw.do_sample === false) return { temperature: 0, topP: 1 };
  return {
    temperature: typeof raw.temperature === 'number' ? raw.temperature : fallback.temperature,
    topP: typeof raw.top_p === 'number' ? raw.top_p : fallback.topP,
  };
}

export async function generateCommand(flags: Flags): Promise<void> {
  const { dir, model } = await loadModelFlag(flags);
  const tokenizer = await loadTokenizer(dir);
  const prompt = requireString(flags, 'prompt', 'the text to continue');
  const maxNewTokens = numberFlag(flags, 'max-new-tokens', 64, { integer: true, min: 1 });
  // Defaults come from the model's generation_config.json, as in transformers' generate().
  const defaults = generationDefaults(dir);
  const temperature = numberFlag(flags, 'temperature', defaults.temperature, { min: 0 });
  const topP = numberFlag(flags, 'top-p', defaults.topP, { min: 0, max: 1 });
  const seed = numberFlag(flags, 'seed', 0, { integer: true, min: 0 });
  const promptIds = tokenizer.encode(prompt);
  if (promptIds.length === 0) throw new LowrankError('BAD_ARGUMENT', '--prompt encodes to no tokens; give some text');
  const started = performance.now();
  const streamed: number[] = [];
  let printed = '';
  if (!flags.json) process.stdout.write(prompt);
  const ids = generate(model, promptIds, {
    maxNewTokens,
    temperature,
    topP,
    seed,
    useCache: !flags['no-cache'],
    stopTokenIds: tokenizer.eosTokenId === undefined ? [] : [tokenizer.eosTokenId],
    onToken: (id) => {
      if (flags.json) return;
      // Decode the whole continuation and print what is new, so multi-byte characters split
      // across tokens come out whole.
      streamed.push(id);
      const text = tokenizer.decode(streamed, { skipSpecialTokens: true });
      if (!text.endsWith('\uFFFD')) {
        process.stdout.write(text.slice(printed.length));
        printed = text;
      }
    },
  });
  const seconds = (performance.now() - started) / 1000;
  const text = tokenizer.decode(ids, { skipSpecialTokens: true });
  if (flags.json) return printJson({ prompt, text, ids, tokens: ids.length, seconds, tokensPerSecond: ids.length / seconds });
  process.stdout.write(`${text.slice(printed.length)}\n`);
  console.error(`(${ids.length} tokens in ${seconds.toFixed(2)} s, ${(ids.length / seconds).toFixed(1)} tokens/s)`);
}

export async function evalCommand(flags: Flags): Promise<void> {
  const { dir, model } = await loadModelFlag(flags);
  const data = requireString(flags, 'data', 'a .txt or .jsonl ({"text": ...}) file');
  if (!fs.existsSync(data)) throw new LowrankError('FILE_NOT_FOUND', `${data}: no such file`);
  const tokenizer = await loadTokenizer(dir);
  const seqLen = numberFlag(flags, 'seq-len', Math.min(256, model.config.maxPositions), { integer: true, min: 2, max: model.config.maxPositions });
  const batchSize = numberFlag(flags, 'batch-size', 8, { integer: true, min: 1 });
  // Each document is scored on its own, cut into windows of seqLen; padding is masked out.
  const windows: number[][] = [];
  for (const doc of readTextCorpus(data)) {
    const ids = tokenizer.encode(doc);
    for (let i = 0; i < ids.length - 1; i += seqLen) windows.push(ids.slice(i, i + seqLen));
  }
  const usable = windows.filter((w) => w.length >= 2);
  if (!usable.length) throw new LowrankError('BAD_DATA', `${data}: no text to evaluate`);
  const bar = flags.json ? null : new ProgressBar('eval', usable.length);
  let lossSum = 0;
  let tokens = 0;
  for (let b = 0; b < usable.length; b += batchSize) {
    const rows = usable.slice(b, b + batchSize).map((w) => ({ ids: Int32Array.from(w), labels: Int32Array.from(w) }));
    const count = rows.reduce((n, r) => n + r.ids.length - 1, 0);
    lossSum += validationLoss(model, rows, batchSize) * count;
    tokens += count;
    bar?.update(Math.min(b + batchSize, usable.length), `loss ${(lossSum / tokens).toFixed(4)}`);
  }
  bar?.finish();
  const loss = lossSum / tokens;
  const result = { loss, perplexity: Math.exp(loss), tokens, model: path.resolve(dir), data: path.resolve(data) };
  if (flags.json) return printJson(result);
  console.log(`loss ${loss.toFixed(4)}, perplexity ${result.perplexity.toFixed(2)} over ${tokens} tokens`);
}
