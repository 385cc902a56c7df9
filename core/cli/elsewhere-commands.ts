/**
 * `lowrank export-job` (a run as a LLaMA-Factory or axolotl job folder, optionally launched here)
 * and `lowrank import` (an adapter trained elsewhere as a run). See core/elsewhere/.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { openStore } from '../store/index.ts';
import { formatBytes } from '../train/memory.ts';
import type { Flags } from '../cli.ts';
import { ENGINES, type EngineId } from '../elsewhere/job-spec.ts';
import { exportJob } from '../elsewhere/export-job.ts';
import { STRATEGY_NAMES } from '../elsewhere/gpu-memory.ts';
import { importAdapter } from '../elsewhere/import-adapter.ts';
import { launchJob, type LaunchedJob, type LaunchEvent } from '../elsewhere/launch.ts';
import type { RunStore } from '../store/index.ts';
import { choiceFlag, printJson, requireString } from './flags.ts';

function readConfigFile(file: string): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new LowrankError('FILE_NOT_FOUND', `--config ${file}: no such file`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new LowrankError('BAD_CONFIG', `${file}: not valid JSON (${(e as Error).message.split('\n')[0]}); a config file holds the run's settings as \`lowrank runs show ID --json\` prints its "config"`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new LowrankError('BAD_CONFIG', `${file}: expected a JSON object of run settings`);
  return raw as Record<string, unknown>;
}

const printEvents = (json: boolean) => (e: LaunchEvent) => {
  if (json) return;
  if (e.type === 'step') console.log(`step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)}`);
  else if (e.type === 'eval') console.log(`step ${e.step} validation loss ${e.valLoss.toFixed(4)}`);
  else if (e.type === 'log') console.error(e.message);
};

/** Follows a launched engine to its end; Ctrl-C pauses it (stop after the step), a second Ctrl-C cancels. */
async function follow(store: RunStore, job: LaunchedJob, json: boolean): Promise<void> {
  if (!json) console.log(`run ${job.runId}: LLaMA-Factory started (pid ${job.pid}); Ctrl-C pauses (stop after this step, checkpoints kept), a second Ctrl-C cancels`);
  let interrupts = 0;
  const onSigint = () => (++interrupts === 1 ? job.pause() : job.cancel());
  process.on('SIGINT', onSigint);
  try {
    const status = await job.result;
    const run = store.getRun(job.runId);
    if (json) return printJson({ runId: job.runId, status });
    console.log(`run ${job.runId}: ${status}${run.errorMessage ? `: ${run.errorMessage}` : ''}`);
    if (status === 'failed') throw new LowrankError('BAD_RUN_STATE', `run ${job.runId} failed: ${run.errorMessage ?? 'see lowrank runs show'}`);
  } finally {
    process.off('SIGINT', onSigint);
  }
}

export async function exportJobCommand(flags: Flags): Promise<void> {
  if (typeof flags.resume === 'string') {
    const store = openStore();
    try {
      const run = store.getRun(flags.resume);
      const jobDir = (run.config.elsewhere as { jobDir?: string } | undefined)?.jobDir;
      if (run.origin !== 'launched' || !jobDir) throw new LowrankError('BAD_RUN_STATE', `run ${run.id} was not launched with --launch; continue a local run with lowrank train --resume ${run.id}`);
      return await follow(store, launchJob(store, jobDir, { resumeRunId: run.id, onEvent: printEvents(Boolean(flags.json)) }), Boolean(flags.json));
    } finally {
      store.close();
    }
  }
  if (flags.engine === undefined) throw new LowrankError('BAD_ARGUMENT', `--engine is required (${ENGINES.join(' or ')})`);
  const engine = choiceFlag<EngineId>(flags, 'engine', ENGINES, 'llamafactory');
  const out = path.resolve(requireString(flags, 'out', 'the job folder to write (new or empty)'));
  const runId = typeof flags.run === 'string' ? flags.run : undefined;
  const configFile = typeof flags.config === 'string' ? flags.config : undefined;
  if ((runId === undefined) === (configFile === undefined)) throw new LowrankError('BAD_ARGUMENT', 'give one of --run RUN_ID or --config FILE');
  const store = openStore();
  try {
    let config: Record<string, unknown> | undefined;
    if (configFile) config = readConfigFile(configFile);
    const result = await exportJob(store, { engine, out, runId, config }, (m) => !flags.json && console.error(m)).catch((e: unknown) => {
      // Name the file a config error comes from.
      if (configFile && e instanceof LowrankError && e.code === 'BAD_CONFIG' && e.message.startsWith('config: ')) throw new LowrankError('BAD_CONFIG', `${configFile}: ${e.message.slice(8)}`);
      throw e;
    });
    if (!flags.launch) {
      if (flags.json) return printJson(result);
      console.log(`wrote the ${engine} job for ${result.model} to ${result.dir} (${result.records} records${result.skipped ? `, ${result.skipped} bad left out` : ''})`);
      for (const c of result.commands) console.log(`  ${c.title}: ${c.command}`);
      if (result.memory) {
        console.log('memory per GPU:');
        for (const m of result.memory) console.log(`  ${STRATEGY_NAMES[m.strategy].padEnd(26)} ${String(m.gpus).padStart(2)} GPU${m.gpus > 1 ? 's' : ' '} ${formatBytes(m.bytes)}`);
      } else if (result.memoryNote) console.log(result.memoryNote);
      return;
    }
    await follow(store, launchJob(store, result.dir, { onEvent: printEvents(Boolean(flags.json)) }), Boolean(flags.json));
  } finally {
    store.close();
  }
}

export async function importCommand(flags: Flags): Promise<void> {
  const adapter = path.resolve(requireString(flags, 'adapter', 'the PEFT adapter folder (adapter_config.json + adapter_model.safetensors)'));
  const store = openStore();
  try {
    const result = await importAdapter(
      store,
      {
        adapter,
        base: typeof flags.base === 'string' ? path.resolve(flags.base) : undefined,
        logs: typeof flags.logs === 'string' ? path.resolve(flags.logs) : undefined,
        data: typeof flags.data === 'string' ? path.resolve(flags.data) : undefined,
        name: typeof flags.name === 'string' ? flags.name : undefined,
      },
      (m) => !flags.json && console.error(m),
    );
    if (flags.json) return printJson(result);
    console.log(`imported ${adapter} as run ${result.runId} (${result.method} on ${result.base}, ${result.steps} steps logged)`);
    if (!result.checkpoint) console.log('no dataset known: pass --data FILE to export, evaluate or try it in the playground as a run');
  } finally {
    store.close();
  }
}
