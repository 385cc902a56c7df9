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

export type Flags = Record<string, string | boolean | undefined>;

interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  run(flags: Flags): Promise<void>;
}

const json = { json: { type: 'boolean' } } as const;
const model = { model: { type: 'string' } } as const;

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
    usage: 'lowrank logits --model DIR --ids 1,2,3 [--json]',
    options: { ...model, ids: { type: 'string' }, ...json },
    run: logitsCommand,
  },
  generate: {
    summary: 'continue a prompt',
    usage: 'lowrank generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]',
    options: {
      ...model,
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
    usage: 'lowrank eval --model DIR --data FILE [--seq-len L] [--batch-size B] [--json]',
    options: { ...model, data: { type: 'string' }, 'seq-len': { type: 'string' }, 'batch-size': { type: 'string' }, ...json },
    run: evalCommand,
  },
  pretrain: {
    summary: 'pre-train a Llama-architecture model from scratch on a text corpus',
    usage:
      'lowrank pretrain --data brown|FILE|DIR --out DIR [--vocab-size 4096 --hidden 256 --layers 4 --heads 8 --kv-heads 4 --intermediate 688] ' +
      '[--seq-len 128 --batch-size 16 --steps 2000 --lr 3e-3 --warmup 100 --seed 0 --eval-every 100 --checkpoint-every 100] ' +
      '[--dtype float32|float16|bfloat16] [--resume] [--max-minutes M] [--json]',
    options: {
      ...Object.fromEntries(
        [
          'data', 'out', 'vocab-size', 'hidden', 'layers', 'heads', 'kv-heads', 'intermediate', 'seq-len', 'batch-size',
          'steps', 'lr', 'warmup', 'min-lr-ratio', 'weight-decay', 'seed', 'eval-every', 'checkpoint-every', 'dtype',
          'prompt', 'max-minutes',
        ].map((k) => [k, { type: 'string' as const }]),
      ),
      resume: { type: 'boolean' },
      ...json,
    },
    run: pretrainCommand,
  },
  bench: {
    summary: 'performance figures: matmul GFLOP/s and forward tokens/s',
    usage: 'lowrank bench [--quick] [--json]',
    options: { quick: { type: 'boolean' }, ...json },
    run: benchCommand,
  },
  demo: {
    summary: 'the headless fine-tuning demo',
    usage: 'lowrank demo',
    options: {},
    run: async () => {
      throw new LowrankError(
        'BAD_ARGUMENT',
        'the fine-tuning demo arrives with the fine-tuning engine; until then try `lowrank generate --model resources/models/brown-llama --prompt "The"`',
      );
    },
  },
};

function help(): string {
  const lines = ['Lowrank Studio — fine-tune and pre-train language models on your own machine.', '', 'Commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(10)} ${c.summary}`);
  lines.push('', 'Run `lowrank <command> --help` for its flags. --debug shows stack traces. LOWRANK_BACKEND=wasm|cpu|tensorflow|webgpu forces a backend.');
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
    try {
      values = parseArgs({ args: args.slice(1), options: command.options, strict: true, allowPositionals: false }).values as Flags;
    } catch (e) {
      throw new LowrankError('BAD_ARGUMENT', `${(e as Error).message.split('\n')[0]}; usage: ${command.usage}`);
    }
    await command.run(values);
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
