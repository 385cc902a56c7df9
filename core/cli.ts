/**
 * The `lowrank` command: a thin transport over the engine. Each subcommand parses its flags,
 * calls core modules, and prints text (or JSON with --json). Errors a user can cause print one
 * line naming the file/flag at fault and exit 2; --debug adds the stack.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isLowrankError, LowrankError } from './errors.ts';
import { infoCommand, inspectCommand } from './cli/info.ts';
import { evalCommand, generateCommand, logitsCommand } from './cli/model-commands.ts';
import { pretrainCommand } from './cli/pretrain-command.ts';
import { benchCommand } from './cli/bench.ts';
import { benchTrainCommand } from './cli/bench-train.ts';
import { dataPreviewCommand, methodsCommand, runsCommand, trainCommand } from './cli/train-commands.ts';
import { exportCommand } from './cli/export-command.ts';
import { demoCommand } from './cli/demo.ts';
import { serveCommand } from './serve/command.ts';
import { modelsCommand, resolveModelFlag } from './cli/hub-commands.ts';

export type Flags = Record<string, string | boolean | undefined>;

interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  /** Whether words after the command are allowed (`runs show ID`). */
  positionals?: boolean;
  run(flags: Flags, positionals: string[]): Promise<void>;
}

const json = { json: { type: 'boolean' } } as const;
const model = { model: { type: 'string' } } as const;
const adapter = { adapter: { type: 'string' } } as const;
const strings = (...names: string[]) => Object.fromEntries(names.map((k) => [k, { type: 'string' as const }]));

const COMMANDS: Record<string, Command> = {
  info: {
    summary: 'backend, versions, threads and a measured matmul rate',
    usage: 'lowrank info [--json]',
    options: { ...json },
    run: infoCommand,
  },
  inspect: {
    summary: 'architecture, parameters, dtype, layers and adapter targets of a model folder',
    usage: 'lowrank inspect --model DIR [--json]',
    options: { ...model, ...json },
    run: inspectCommand,
  },
  logits: {
    summary: 'float32 next-token logits at every position (a parity tool)',
    usage: 'lowrank logits --model DIR [--adapter PEFT_DIR] --ids 1,2,3 [--json]',
    options: { ...model, ...adapter, ids: { type: 'string' }, ...json },
    run: logitsCommand,
  },
  generate: {
    summary: 'continue a prompt',
    usage: 'lowrank generate --model DIR [--adapter PEFT_DIR] --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]',
    options: {
      ...model,
      ...adapter,
      prompt: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      'no-cache': { type: 'boolean' },
      ...json,
    },
    run: generateCommand,
  },
  eval: {
    summary: 'loss and perplexity of a model on a text file',
    usage: 'lowrank eval --model DIR [--adapter PEFT_DIR] --data FILE [--seq-len L] [--batch-size B] [--json]',
    options: { ...model, ...adapter, data: { type: 'string' }, 'seq-len': { type: 'string' }, 'batch-size': { type: 'string' }, ...json },
    run: evalCommand,
  },
  pretrain: {
    summary: 'pre-train a Llama-architecture model from scratch on a text corpus',
    usage:
      'lowrank pretrain --data brown|FILE|DIR --out DIR [--vocab-size 4096 --hidden 256 --layers 4 --heads 8 --kv-heads 4 --intermediate 688] ' +
      '[--seq-len 128 --batch-size 16 --steps 2000 --lr 3e-3 --warmup 100 --seed 0 --eval-every 100 --checkpoint-every 100] ' +
      '[--dtype float32|float16|bfloat16] [--init-from MODEL_DIR] [--resume] [--max-minutes M] [--json]',
    options: {
      ...Object.fromEntries(
        [
          'data', 'out', 'vocab-size', 'hidden', 'layers', 'heads', 'kv-heads', 'intermediate', 'seq-len', 'batch-size',
          'steps', 'lr', 'warmup', 'min-lr-ratio', 'weight-decay', 'seed', 'eval-every', 'checkpoint-every', 'dtype',
          'prompt', 'max-minutes', 'init-from',
        ].map((k) => [k, { type: 'string' as const }]),
      ),
      resume: { type: 'boolean' },
      ...json,
    },
    run: pretrainCommand,
  },
  train: {
    summary: 'fine-tune a model on a dataset with a method of the registry',
    usage:
      'lowrank train --model DIR --data FILE --method ID [--rank R --alpha A --dropout D --target LIST|all-linear --param k=v,...] ' +
      '(--steps N | --epochs E) [--batch-size B --seq-len L --lr X --schedule cosine|linear|constant --warmup N --seed S] ' +
      '[--grad-accum N --clip-norm X --weight-decay X --eval-every N --checkpoint-every N --early-stopping N --validation F] ' +
      '[--format auto|chat|alpaca|... --on-bad-line fail|skip --train-on-prompt --adapter PEFT_DIR --name NAME] ' +
      '[--base-dtype auto|bf16|f16|f32|int8|nf4 --gradient-checkpointing auto|on|off] [--resume RUN_ID] [--json]',
    options: {
      ...strings(
        'model', 'data', 'method', 'rank', 'alpha', 'dropout', 'target', 'param', 'steps', 'epochs', 'batch-size', 'seq-len', 'lr',
        'schedule', 'warmup', 'seed', 'grad-accum', 'clip-norm', 'weight-decay', 'eval-every', 'checkpoint-every', 'early-stopping',
        'validation', 'format', 'on-bad-line', 'adapter', 'name', 'resume', 'metric-examples', 'base-dtype', 'gradient-checkpointing',
      ),
      'train-on-prompt': { type: 'boolean' },
      ...json,
    },
    run: trainCommand,
  },
  data: {
    summary: 'preview a dataset as the model will see it (rendering, token counts, trained tokens)',
    usage: 'lowrank data preview --model DIR --data FILE [--format F] [--seq-len L] [--count N] [--json]',
    options: { ...strings('model', 'data', 'format', 'seq-len', 'count'), ...json },
    positionals: true,
    run: async (flags, positionals) => {
      if (positionals[0] !== 'preview') throw new LowrankError('BAD_ARGUMENT', 'usage: lowrank data preview --model DIR --data FILE');
      await dataPreviewCommand(flags);
    },
  },
  runs: {
    summary: 'list, show and compare stored runs',
    usage: 'lowrank runs list | show RUN_ID | compare RUN_ID RUN_ID... [--json]',
    options: { ...strings('limit'), ...json },
    positionals: true,
    run: runsCommand,
  },
  export: {
    summary: 'export a run as a PEFT adapter, a merged Hugging Face folder or GGUF',
    usage: 'lowrank export --run RUN_ID --format peft|merged|gguf [--quant f32|f16|q8_0|q4_0|q4_K_M] [--dtype base|float32] [--param name=value] --out DIR [--json]',
    options: { ...strings('run', 'format', 'quant', 'dtype', 'out', 'param'), ...json },
    run: exportCommand,
  },
  'export-job': {
    summary: 'a run as a LLaMA-Factory or axolotl job folder (config, data, launch commands, memory per GPU); --launch runs it here',
    usage: 'lowrank export-job (--run RUN_ID | --config FILE.json) --engine llamafactory|axolotl --out DIR [--launch] [--json] | lowrank export-job --resume RUN_ID',
    options: { ...strings('run', 'config', 'engine', 'out', 'resume'), launch: { type: 'boolean' }, ...json },
    // Loaded when used: the other commands start no faster for it.
    run: async (flags) => (await import('./cli/elsewhere-commands.ts')).exportJobCommand(flags),
  },
  import: {
    summary: 'a PEFT adapter trained elsewhere as a run in the store (with its trainer log as the loss curve)',
    usage: 'lowrank import --adapter DIR [--base MODEL_DIR] [--logs trainer_log.jsonl|trainer_state.json] [--data FILE] [--name NAME] [--json]',
    options: { ...strings('adapter', 'base', 'logs', 'data', 'name'), ...json },
    run: async (flags) => (await import('./cli/elsewhere-commands.ts')).importCommand(flags),
  },
  methods: {
    summary: 'the method registry: ids, papers, hyper-parameters and defaults',
    usage: 'lowrank methods [--json]',
    options: { ...json },
    run: methodsCommand,
  },
  'bench-train': {
    summary: 'time LoRA training steps of a model on given token batches (one configuration of `bench --real`)',
    usage: 'lowrank bench-train --model DIR --batches FILE.json [--steps N --warmup W --base-dtype D --gradient-checkpointing auto|on|off] [--json]',
    options: { ...strings('model', 'batches', 'steps', 'warmup', 'base-dtype', 'gradient-checkpointing'), ...json },
    run: benchTrainCommand,
  },
  bench: {
    summary: 'performance figures: matmul GFLOP/s and forward tokens/s',
    usage: 'lowrank bench [--quick] [--json] | lowrank bench --real [--peer torch] [--models bench,smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b] [--write FILE.md]',
    options: { quick: { type: 'boolean' }, real: { type: 'boolean' }, ...strings('peer', 'models', 'write'), ...json },
    run: benchCommand,
  },
  models: {
    summary: 'models in the Hugging Face cache: download one from the Hub, list them, remove one',
    usage: 'lowrank models pull ORG/NAME[@REVISION] [--revision R] [--json] | list [--json] | rm ORG/NAME[@REVISION]  (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE)',
    options: { ...strings('revision'), ...json },
    positionals: true,
    run: modelsCommand,
  },
  serve: {
    summary: 'the app in a browser: the service over a WebSocket on 127.0.0.1, with a token in the URL',
    usage: 'lowrank serve [--port 7860] [--allow DIR,...]',
    options: { ...strings('port', 'allow') },
    run: serveCommand,
  },
  demo: {
    summary: 'the headless fine-tuning demo: LoRA on the bundled model, accuracy before and after',
    usage: 'lowrank demo [--steps N]',
    options: { ...strings('steps') },
    run: demoCommand,
  },
};

function help(): string {
  const lines = ['Lowrank Studio — fine-tune and pre-train language models on your own machine.', '', 'Commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(10)} ${c.summary}`);
  lines.push('', '--model takes a model folder or a Hugging Face Hub id, org/name[@revision] (the HF cache first, then a download unless HF_HUB_OFFLINE=1).');
  lines.push('Run `lowrank <command> --help` for its flags. --debug shows stack traces. LOWRANK_BACKEND=wasm|cpu|tensorflow|webgpu forces a backend.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const args = argv.filter((a) => a !== '--debug');
  const name = args[0];
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return 0;
  }
  const command = COMMANDS[name];
  try {
    if (!command) throw new LowrankError('BAD_ARGUMENT', `unknown command "${name}"; commands: ${Object.keys(COMMANDS).join(', ')}`);
    if (args.includes('--help') || args.includes('-h')) {
      console.log(`usage: ${command.usage}`);
      return 0;
    }
    let values: Flags;
    let positionals: string[];
    try {
      const parsed = parseArgs({ args: args.slice(1), options: command.options, strict: true, allowPositionals: Boolean(command.positionals) });
      values = parsed.values as Flags;
      positionals = parsed.positionals;
    } catch (e) {
      throw new LowrankError('BAD_ARGUMENT', `${(e as Error).message.split('\n')[0]}; usage: ${command.usage}`);
    }
    // --model (and pretrain's --init-from) take a folder or a Hub id (org/name[@revision]); commands see a folder.
    for (const flag of ['model', 'init-from']) {
      const value = values[flag];
      if (typeof value === 'string' && value !== '') values[flag] = await resolveModelFlag(value);
    }
    await command.run(values, positionals);
    return 0;
  } catch (e) {
    if (isLowrankError(e)) {
      console.error(`lowrank ${name}: ${e.message}`);
      if (debug) console.error(e.stack);
      return 2;
    }
    const message = e instanceof Error ? e.message.split('\n')[0] : String(e);
    console.error(`lowrank ${name}: internal error: ${message}${debug ? '' : ' (run again with --debug for details)'}`);
    if (debug && e instanceof Error) console.error(e.stack);
    return 1;
  }
}
