/**
 * Run elsewhere, end to end through the CLI: a run trained here is written as a LLaMA-Factory job;
 * its adapter comes back through `lowrank import` with the engine's trainer_log.jsonl as the loss
 * curve and evaluates to the same logits as the run that exported it (and merges like it); and
 * `--launch` against a stand-in `llamafactory-cli` on PATH (it checks its YAML and the registered
 * dataset, appends log lines over a few seconds, writes a PEFT adapter) is a live run that
 * completes and compares beside the local one, while a stand-in that exits non-zero leaves a failed
 * run with its last output, and one told to pause (SIGABRT) leaves a paused run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import * as tf from '../core/tf.ts';
import { openStore } from '../core/store/index.ts';
import { loadTrainedRun } from '../core/train/finetune.ts';
import { launchJob } from '../core/elsewhere/launch.ts';
import { findOnPath } from '../core/elsewhere/local-engine.ts';
import { StudioService } from '../core/service.ts';
import { FINETUNE_DEFAULTS } from '../core/train/finetune.ts';
import type { FinetuneConfigInput, StudioEvent } from '../core/contract.ts';
import type { JobRunner } from '../core/service/jobs.ts';
import { runJob } from '../core/service/run-job.ts';

/** Engine jobs in this process: the service's calls without a forked engine per job (seconds each here). */
const inProcess: JobRunner = <T>(request: Parameters<JobRunner>[0], handlers: Parameters<JobRunner>[1] = {}) => {
  const result = runJob(request, {
    send: (m) => (m.type === 'progress' ? handlers.onProgress?.(m.message) : m.type === 'event' ? handlers.onEvent?.(m.event) : undefined),
    shouldStop: () => false,
  }) as Promise<T>;
  return { result, pid: process.pid, stop: () => {}, signal: () => {}, exited: result.then(() => undefined, () => undefined) };
};
import { cliWorkspace, logitsOf, lowrank, maxDiff, trainAndExport } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-elsewhere-');
const IDS = [5, 60, 7, 99, 120, 3];

/** A LLaMA-Factory trainer_log.jsonl line (train/callbacks.py LogCallback.on_log keys). */
const logLine = (step: number, total: number, loss: number | null, evalLoss: number | null = null) =>
  JSON.stringify({ current_steps: step, total_steps: total, loss, eval_loss: evalLoss, lr: loss === null ? null : 1e-4, epoch: step / total, percentage: (100 * step) / total, elapsed_time: `0:00:0${step}`, remaining_time: '0:00:01' });

async function runLogits(runId: string): Promise<number[]> {
  const store = openStore();
  try {
    const prepared = await loadTrainedRun(store, runId);
    try {
      const logits = tf.tidy(() => prepared.model.forward(tf.tensor2d(IDS, [1, IDS.length], 'int32')).logits);
      const values = [...(logits.dataSync() as Float32Array)];
      logits.dispose();
      return values;
    } finally {
      prepared.attached.detach();
      prepared.model.dispose();
    }
  } finally {
    store.close();
  }
}

/** A stand-in for LLaMA-Factory's console script: checks its config as the engine would read it, then trains for show. */
function writeStandIn(dir: string): void {
  const jsYaml = createRequire(import.meta.url).resolve('js-yaml');
  fs.mkdirSync(dir, { recursive: true });
  const script = `#!${process.execPath}
const fs = require('fs'), path = require('path');
const yaml = require(${JSON.stringify(jsYaml)});
const [command, file, ...overrides] = process.argv.slice(2);
const resumed = overrides.map((o) => /^resume_from_checkpoint=.*checkpoint-(\\d+)$/.exec(o)).find(Boolean);
if (command !== 'train' || !file) { console.error('usage: llamafactory-cli train CONFIG.yaml'); process.exit(2); }
const cfg = yaml.load(fs.readFileSync(file, 'utf8'));
for (const key of ['model_name_or_path', 'stage', 'finetuning_type', 'lora_rank', 'lora_target', 'dataset', 'dataset_dir', 'output_dir', 'per_device_train_batch_size', 'learning_rate', 'max_steps']) {
  if (cfg[key] === undefined) { console.error('config: missing ' + key); process.exit(4); }
}
const info = JSON.parse(fs.readFileSync(path.join(cfg.dataset_dir, 'dataset_info.json'), 'utf8'))[cfg.dataset];
if (!info || !fs.existsSync(path.join(cfg.dataset_dir, info.file_name))) { console.error('dataset ' + cfg.dataset + ' is not registered'); process.exit(5); }
if (!fs.existsSync(path.join(cfg.model_name_or_path, 'config.json'))) { console.error('no model at ' + cfg.model_name_or_path); process.exit(6); }
if (process.env.LLAMABOARD_ENABLED !== '1') { console.error('LLAMABOARD_ENABLED is not set: SIGABRT would kill'); process.exit(7); }
let aborted = false;
process.on('SIGABRT', () => { aborted = true; });
fs.mkdirSync(cfg.output_dir, { recursive: true });
const log = path.join(cfg.output_dir, 'trainer_log.jsonl');
const total = 6;
let step = resumed ? Number(resumed[1]) : 0;
const timer = setInterval(() => {
  step++;
  fs.appendFileSync(log, JSON.stringify({ current_steps: step, total_steps: total, loss: 3 - 0.25 * step, eval_loss: null, lr: 1e-4, epoch: step / total, percentage: 100 * step / total, elapsed_time: '0:00:0' + step, remaining_time: '0:00:01' }) + '\\n');
  console.log('{"loss": ' + (3 - 0.25 * step) + '}');
  if (process.env.STANDIN_FAIL && step === 2) { console.error('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'); process.exit(3); }
  if (step === 3) fs.mkdirSync(path.join(cfg.output_dir, 'checkpoint-3'), { recursive: true });
  if (step === total || aborted) {
    clearInterval(timer);
    fs.cpSync(process.env.STANDIN_ADAPTER, cfg.output_dir, { recursive: true });
    process.exit(0);
  }
}, 400);
`;
  fs.writeFileSync(path.join(dir, 'llamafactory-cli'), script, { mode: 0o755 });
}

describe('run elsewhere', () => {
  let local: Awaited<ReturnType<typeof trainAndExport>>;

  it('imports an adapter trained elsewhere: its log is the loss curve, its logits are those of the run that exported it, and it merges like it', async () => {
    local = await trainAndExport(ws, 'lora', ['--rank', '4', '--alpha', '8', '--dropout', '0']);
    const job = path.join(ws.root, 'job-import');
    const written = await lowrank(['export-job', '--run', local.runId, '--engine', 'llamafactory', '--out', job, '--json']);
    expect(written.code).toBe(0);
    // What LLaMA-Factory leaves in output/: the adapter and its log.
    const output = path.join(job, 'output');
    fs.cpSync(local.peft, output, { recursive: true });
    fs.writeFileSync(path.join(output, 'trainer_log.jsonl'), [logLine(1, 3, 2.5), logLine(2, 3, 2.0), logLine(2, 3, null, 2.2), logLine(3, 3, 1.75)].join('\n') + '\n');

    const imported = await lowrank(['import', '--adapter', output, '--logs', path.join(output, 'trainer_log.jsonl'), '--json']);
    expect(imported.code).toBe(0);
    const runId = imported.lines[0].runId as string;
    const store = openStore();
    try {
      const run = store.getRun(runId);
      expect(run).toMatchObject({ origin: 'imported', status: 'completed', method: 'lora', baseModelPath: ws.modelDir, finalTrainLoss: 1.75, finalValLoss: 2.2 });
      expect(run.config).toMatchObject({ params: { rank: 4, alpha: 8 }, targets: ['q_proj', 'v_proj'], data: ws.data });
      expect(store.metrics(runId, { name: 'loss', split: 'train' }).map((m) => [m.step, m.value])).toEqual([[1, 2.5], [2, 2.0], [3, 1.75]]);
      expect(store.metrics(runId, { name: 'loss', split: 'val' }).map((m) => [m.step, m.value])).toEqual([[2, 2.2]]);
      expect(store.latestCheckpoint(runId)?.step).toBe(3);
    } finally {
      store.close();
    }
    const original = await runLogits(local.runId);
    const again = await runLogits(runId);
    expect(again.length).toBe(IDS.length * 320);
    // The same float32 tensors through the same code: bit-identical (measured 0).
    expect(maxDiff(again, original)).toBe(0);

    const merged = path.join(ws.root, 'imported-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    expect(maxDiff(await logitsOf(merged), local.mergedLogits)).toBe(0);
  });

  it('imports a DoRA adapter with no job folder (--base and --data given) with the logits of its run', async () => {
    const dora = await trainAndExport(ws, 'dora', ['--rank', '4', '--alpha', '8', '--dropout', '0']);
    const imported = await lowrank(['import', '--adapter', dora.peft, '--base', ws.modelDir, '--data', ws.data, '--json']);
    expect(imported.code).toBe(0);
    const runId = imported.lines[0].runId as string;
    const store = openStore();
    try {
      expect(store.getRun(runId)).toMatchObject({ origin: 'imported', method: 'dora', status: 'completed', trainableParams: store.getRun(dora.runId).trainableParams });
    } finally {
      store.close();
    }
    expect(maxDiff(await runLogits(runId), await runLogits(dora.runId))).toBe(0);
  });

  it('refuses an adapter whose base is unknown, in one line naming the fix', async () => {
    const bare = path.join(ws.root, 'bare-adapter');
    fs.cpSync(local.peft, bare, { recursive: true });
    const config = JSON.parse(fs.readFileSync(path.join(bare, 'adapter_config.json'), 'utf8'));
    fs.writeFileSync(path.join(bare, 'adapter_config.json'), JSON.stringify({ ...config, base_model_name_or_path: 'org/not-here' }));
    const r = await lowrank(['import', '--adapter', bare]);
    expect(r.code).toBe(2);
  });

  it('--launch streams a stand-in llamafactory-cli as a live run that completes, imports its adapter and compares beside the local run', async () => {
    const bin = path.join(ws.root, 'bin');
    writeStandIn(bin);
    const savedPath = process.env.PATH;
    process.env.PATH = `${bin}${path.delimiter}${savedPath}`;
    process.env.STANDIN_ADAPTER = local.peft;
    const seen: Array<{ status: string; losses: number }> = [];
    const watcher = openStore();
    const poll = setInterval(() => {
      const run = watcher.listRuns({ limit: 1 })[0];
      if (run?.origin === 'launched') seen.push({ status: run.status, losses: watcher.metrics(run.id, { name: 'loss' }).length });
    }, 100);
    try {
      const r = await lowrank(['export-job', '--run', local.runId, '--engine', 'llamafactory', '--out', path.join(ws.root, 'job-launch'), '--launch', '--json']);
      expect(r.code).toBe(0);
      const runId = r.lines.at(-1)!.runId as string;
      expect(r.lines.at(-1)!.status).toBe('completed');
      // Seen while the engine ran: running, with part of the curve already in the store.
      expect(seen.some((s) => s.status === 'running' && s.losses > 0 && s.losses < 6)).toBe(true);
      const run = watcher.getRun(runId);
      expect(run).toMatchObject({ origin: 'launched', status: 'completed', method: 'lora', finalTrainLoss: 1.5 });
      expect(watcher.metrics(runId, { name: 'loss' }).map((m) => m.value)).toEqual([2.75, 2.5, 2.25, 2, 1.75, 1.5]);
      expect(watcher.logs(runId).some((l) => l.message.includes('checkpoint-3'))).toBe(true);
      expect(maxDiff(await runLogits(runId), await runLogits(local.runId))).toBe(0);
      const compared = await lowrank(['runs', 'compare', local.runId, runId, '--json']);
      expect(compared.code).toBe(0);
      expect((compared.lines[0].runs as Array<{ id: string }>).map((x) => x.id)).toEqual([local.runId, runId]);
    } finally {
      clearInterval(poll);
      watcher.close();
      process.env.PATH = savedPath;
    }
  });

  it('a stand-in that exits non-zero leaves a failed run with its last output', async () => {
    const savedPath = process.env.PATH;
    process.env.PATH = `${path.join(ws.root, 'bin')}${path.delimiter}${savedPath}`;
    process.env.STANDIN_FAIL = '1';
    try {
      const r = await lowrank(['export-job', '--run', local.runId, '--engine', 'llamafactory', '--out', path.join(ws.root, 'job-fail'), '--launch']);
      expect(r.code).toBe(2);
      const store = openStore();
      try {
        const run = store.listRuns({ limit: 1 })[0];
        expect(run).toMatchObject({ origin: 'launched', status: 'failed', errorCode: 'ENGINE_FAILED' });
        expect(run.errorMessage).toContain('exited with code 3');
        expect(run.errorMessage).toContain('CUDA out of memory');
        expect(store.logs(run.id).filter((l) => l.level === 'error').map((l) => l.message)).toContain('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB');
        expect(store.metrics(run.id, { name: 'loss' }).length).toBe(2);
      } finally {
        store.close();
      }
    } finally {
      delete process.env.STANDIN_FAIL;
      process.env.PATH = savedPath;
    }
  });

  it('pause stops the engine after its step (SIGABRT, as LLaMA-Factory handles it) and leaves a paused run; resume continues from its checkpoint', async () => {
    const savedPath = process.env.PATH;
    process.env.PATH = `${path.join(ws.root, 'bin')}${path.delimiter}${savedPath}`;
    const jobDir = path.join(ws.root, 'job-pause');
    try {
      expect((await lowrank(['export-job', '--run', local.runId, '--engine', 'llamafactory', '--out', jobDir])).code).toBe(0);
      const store = openStore();
      try {
        const job = launchJob(store, jobDir, { pollMs: 50 });
        await new Promise<void>((resolve) => {
          const wait = setInterval(() => {
            if (store.metrics(job.runId, { name: 'loss' }).length >= 3) {
              clearInterval(wait);
              resolve();
            }
          }, 50);
        });
        job.pause();
        expect(await job.result).toBe('paused');
        expect(store.getRun(job.runId).status).toBe('paused');
        expect(store.metrics(job.runId, { name: 'loss' }).length).toBeLessThan(6);

        const resumed = await lowrank(['export-job', '--resume', job.runId, '--json']);
        expect(resumed.code).toBe(0);
        expect(resumed.lines.at(-1)).toMatchObject({ runId: job.runId, status: 'completed' });
        expect(store.logs(job.runId).some((l) => l.message.includes(`resume_from_checkpoint=${path.join(jobDir, 'output', 'checkpoint-3')}`))).toBe(true);
        expect(store.metrics(job.runId, { name: 'loss' }).map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6]);
      } finally {
        store.close();
      }
    } finally {
      process.env.PATH = savedPath;
    }
  });

  it("the app offers LLaMA-Factory when it and a GPU are here, launches the wizard's config as a live run, and writes a job from the Export dialog", async () => {
    const bin = path.join(ws.root, 'bin');
    // A stand-in nvidia-smi: the GPU check reads its device list.
    fs.writeFileSync(path.join(bin, 'nvidia-smi'), '#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n', { mode: 0o755 });
    const savedPath = process.env.PATH;
    const service = new StudioService({ home: process.env.LOWRANK_HOME!, transport: 'websocket', fileDialog: false, roots: [ws.root], jobRunner: inProcess });
    try {
      process.env.PATH = savedPath;
      const bare = (await service.call('elsewhere.local', {})) as { available: boolean };
      process.env.PATH = `${bin}${path.delimiter}${savedPath}`;
      const here = (await service.call('elsewhere.local', {})) as { available: boolean; gpu: { kind: string; name: string } };
      // Without the stand-ins nothing is offered (unless this machine really has LLaMA-Factory and a GPU).
      if (!findOnPath('llamafactory-cli', savedPath)) expect(bare.available).toBe(false);
      expect(here).toMatchObject({ available: true, gpu: { kind: 'cuda', name: 'GPU 0: NVIDIA H100 80GB HBM3' } });

      const statuses: string[] = [];
      const finished = new Promise<void>((resolve) => {
        service.subscribe((e: StudioEvent) => {
          if (e.type === 'run-status') {
            statuses.push(e.status);
            if (e.status === 'completed' || e.status === 'failed') resolve();
          }
        });
      });
      const config: FinetuneConfigInput = {
        ...FINETUNE_DEFAULTS, model: ws.modelDir, data: ws.data, method: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'v_proj'],
        steps: 6, epochs: null, batchSize: 4, seqLen: 48, baseDtype: 'auto', gradientCheckpointing: 'auto',
      };
      const { runId } = (await service.call('runs.launchElsewhere', { config, engine: 'llamafactory' })) as { runId: string };
      const during = (await service.call('runs.get', { runId })) as { run: { status: string; origin: string }; live: unknown };
      expect(during.run).toMatchObject({ status: 'running', origin: 'launched' });
      expect(during.live).not.toBeNull();
      await finished;
      expect(statuses.at(-1)).toBe('completed');
      const listed = (await service.call('runs.list', {})) as Array<{ id: string; origin: string; status: string }>;
      expect(listed.find((r) => r.id === runId)).toMatchObject({ origin: 'launched', status: 'completed' });
      // Beside the local run in the compare view: the engine's log is the launched run's loss curve.
      const compared = (await service.call('runs.compare', { runIds: [local.runId, runId] })) as { curves: Record<string, { train: Array<[number, number]> }> };
      expect(compared.curves[runId].train).toEqual([[1, 2.75], [2, 2.5], [3, 2.25], [4, 2], [5, 1.75], [6, 1.5]]);
      expect(compared.curves[local.runId].train.length).toBe(3);

      const job = (await service.call('runs.exportJob', { runId, engine: 'axolotl' })) as { dir: string; commands: unknown[]; memory: unknown[] };
      expect(fs.existsSync(path.join(job.dir, 'axolotl.yaml'))).toBe(true);
      expect(job.memory.length).toBe(13);
    } finally {
      process.env.PATH = savedPath;
      await service.close();
    }
  });
});
