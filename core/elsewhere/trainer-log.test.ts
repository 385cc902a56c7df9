/**
 * Engine logs as store metrics: LLaMA-Factory's trainer_log.jsonl lines (the keys LogCallback.on_log
 * writes), transformers' trainer_state.json, a log followed while it grows (partial last line held
 * back), and bad lines named by file:line.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TrainerLogFollower, findEngineLog, logMetrics, parseTrainerLogLine, readTrainerLog } from './trainer-log.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-trainer-log-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A line as LLaMA-Factory's LogCallback writes it (train/callbacks.py, on_log). */
const lfLine = (step: number, loss: number | null, evalLoss: number | null = null) =>
  JSON.stringify({
    current_steps: step, total_steps: 10, loss, eval_loss: evalLoss, predict_loss: null, lr: loss === null ? null : 1e-4 * (10 - step), epoch: step / 10,
    percentage: step * 10, elapsed_time: `0:00:${String(step).padStart(2, '0')}`, remaining_time: '0:00:05',
  });

describe('trainer logs', () => {
  it('reads a LLaMA-Factory trainer_log.jsonl as train loss, learning rate and validation loss by step', () => {
    const file = path.join(root, 'trainer_log.jsonl');
    fs.writeFileSync(file, [lfLine(1, 2.5), lfLine(2, 2.25), lfLine(2, null, 2.4), lfLine(3, 2.0)].join('\n') + '\n');
    const entries = readTrainerLog(file);
    expect(entries.map((e) => e.step)).toEqual([1, 2, 2, 3]);
    expect(entries[0].elapsedSeconds).toBe(1);
    expect(logMetrics(entries)).toEqual([
      { step: 1, split: 'train', name: 'loss', value: 2.5 },
      { step: 1, split: 'train', name: 'lr', value: 1e-4 * 9 },
      { step: 2, split: 'train', name: 'loss', value: 2.25 },
      { step: 2, split: 'train', name: 'lr', value: 1e-4 * 8 },
      { step: 2, split: 'val', name: 'loss', value: 2.4 },
      { step: 3, split: 'train', name: 'loss', value: 2.0 },
      { step: 3, split: 'train', name: 'lr', value: 1e-4 * 7 },
    ]);
  });

  it("reads transformers' trainer_state.json log_history", () => {
    const file = path.join(root, 'trainer_state.json');
    fs.writeFileSync(file, JSON.stringify({ max_steps: 4, log_history: [{ step: 2, loss: 1.5, learning_rate: 0.1 }, { step: 4, eval_loss: 1.25 }, { step: 4, train_runtime: 12 }] }));
    expect(logMetrics(readTrainerLog(file))).toEqual([
      { step: 2, split: 'train', name: 'loss', value: 1.5 },
      { step: 2, split: 'train', name: 'lr', value: 0.1 },
      { step: 4, split: 'val', name: 'loss', value: 1.25 },
    ]);
  });

  it('names the file and line of a line that is not a log entry', () => {
    const file = path.join(root, 'bad.jsonl');
    fs.writeFileSync(file, `${lfLine(1, 2)}\n{"step": 2}\n`);
    expect(() => readTrainerLog(file)).toThrow(`${file}:2: field "current_steps" must be a step number`);
    fs.writeFileSync(file, `${lfLine(1, 2)}\nnot json\n`);
    expect(() => readTrainerLog(file)).toThrow(`${file}:2: not a JSON object`);
    expect(() => parseTrainerLogLine('[1]', 'x:1')).toThrow('x:1: expected a JSON object');
  });

  it('follows a growing log, holding back a partial last line', () => {
    const file = path.join(root, 'growing.jsonl');
    const follower = new TrainerLogFollower(file);
    expect(follower.poll()).toEqual([]);
    const second = lfLine(2, 1.75);
    fs.writeFileSync(file, `${lfLine(1, 2)}\n${second.slice(0, 20)}`);
    expect(follower.poll().map((e) => e.step)).toEqual([1]);
    fs.appendFileSync(file, `${second.slice(20)}\n${lfLine(3, 1.5)}\n`);
    expect(follower.poll().map((e) => [e.step, e.loss])).toEqual([[2, 1.75], [3, 1.5]]);
    expect(follower.poll()).toEqual([]);
    // LLaMA-Factory deletes an old log when a run starts over: the follower starts from the top.
    fs.writeFileSync(file, `${lfLine(1, 3)}\n`);
    expect(follower.poll().map((e) => e.loss)).toEqual([3]);
  });

  it("finds the log an engine left: LLaMA-Factory's trainer_log.jsonl, else the newest checkpoint's trainer_state.json", () => {
    const out = path.join(root, 'output');
    fs.mkdirSync(out);
    expect(findEngineLog(out)).toBeNull();
    for (const step of [5, 20, 10]) {
      fs.mkdirSync(path.join(out, `checkpoint-${step}`));
      fs.writeFileSync(path.join(out, `checkpoint-${step}`, 'trainer_state.json'), JSON.stringify({ max_steps: 20, log_history: [{ step, loss: 1 }] }));
    }
    fs.mkdirSync(path.join(out, 'checkpoint-30'));
    expect(findEngineLog(out)).toBe(path.join(out, 'checkpoint-20', 'trainer_state.json'));
    fs.writeFileSync(path.join(out, 'trainer_log.jsonl'), `${lfLine(1, 2)}\n`);
    expect(findEngineLog(out)).toBe(path.join(out, 'trainer_log.jsonl'));
  });
});
