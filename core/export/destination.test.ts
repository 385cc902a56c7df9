/**
 * An export folder appears whole or not at all: existing destinations and unwritable parents are
 * refused before any work, a failing write leaves neither the destination nor a temporary folder.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { withFreshDestination } from './destination.ts';
import { scratch } from './test-models.ts';

const root = scratch('destination');
afterAll(() => {
  fs.chmodSync(root, 0o755);
  fs.rmSync(root, { recursive: true, force: true });
});

async function caught(action: () => Promise<unknown>): Promise<LowrankError> {
  try {
    await action();
  } catch (e) {
    expect(e).toBeInstanceOf(LowrankError);
    expect((e as Error).message).not.toMatch(/[\r\n]/);
    return e as LowrankError;
  }
  throw new Error('expected a LowrankError');
}

/** Everything in `folder`, so a test can see that no temporary sibling was left. */
const listing = (folder: string) => fs.readdirSync(folder).sort();

describe('withFreshDestination', () => {
  it('moves the finished folder into place and leaves no temporary sibling', async () => {
    const parent = fs.mkdtempSync(path.join(root, 'ok-'));
    const out = path.join(parent, 'export');
    const result = await withFreshDestination(out, (tmp) => {
      expect(path.dirname(tmp)).toBe(parent);
      fs.mkdirSync(path.join(tmp, 'sub'));
      fs.writeFileSync(path.join(tmp, 'sub', 'a.txt'), 'hello');
      return 42;
    });
    expect(result).toBe(42);
    expect(fs.readFileSync(path.join(out, 'sub', 'a.txt'), 'utf8')).toBe('hello');
    expect(listing(parent)).toEqual(['export']);
  });

  it('refuses an existing destination, names it, and does not touch it', async () => {
    const parent = fs.mkdtempSync(path.join(root, 'exists-'));
    const out = path.join(parent, 'export');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'keep.txt'), 'mine');
    let called = false;
    const error = await caught(() => withFreshDestination(out, () => void (called = true)));
    expect(error.code).toBe('BAD_ARGUMENT');
    expect(error.message).toBe(`${out} already exists; choose another --out or delete it`);
    expect(called).toBe(false);
    expect(listing(out)).toEqual(['keep.txt']);
    expect(listing(parent)).toEqual(['export']);
    // A file (or a dangling link) is just as taken as a folder.
    const file = path.join(parent, 'model.gguf');
    fs.writeFileSync(file, 'x');
    expect((await caught(() => withFreshDestination(file, () => {}))).message).toContain('already exists');
  });

  it('removes everything it wrote when the write fails, and passes the error on', async () => {
    const parent = fs.mkdtempSync(path.join(root, 'fail-'));
    const out = path.join(parent, 'export');
    const boom = new LowrankError('SHAPE_MISMATCH', 'tensor x has the wrong shape');
    await expect(
      withFreshDestination(out, (tmp) => {
        fs.writeFileSync(path.join(tmp, 'half.safetensors'), Buffer.alloc(1000));
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(listing(parent)).toEqual([]);
  });

  it('refuses a missing parent folder and names it', async () => {
    const missing = path.join(root, 'no-such-folder');
    const error = await caught(() => withFreshDestination(path.join(missing, 'export'), () => {}));
    expect(error.code).toBe('FILE_NOT_FOUND');
    expect(error.message).toContain(missing);
    expect(fs.existsSync(missing)).toBe(false);
  });

  it('refuses an unwritable parent folder, names it, and writes nothing', () => {
    const parent = fs.mkdtempSync(path.join(root, 'readonly-'));
    fs.chmodSync(parent, 0o555);
    fs.chmodSync(root, 0o755);
    // root may write anywhere, so the check runs as an unprivileged user when the tests run as root.
    const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    const script = `
      import { withFreshDestination } from ${JSON.stringify(path.resolve('core/export/destination.ts'))};
      let called = false;
      try {
        await withFreshDestination(${JSON.stringify(path.join(parent, 'export'))}, () => { called = true; });
        console.log(JSON.stringify({ ok: true }));
      } catch (e) {
        console.log(JSON.stringify({ code: e.code, message: e.message, called }));
      }`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: process.cwd(),
      encoding: 'utf8',
      timeout: 60_000,
      ...asUser,
    });
    expect(child.status, child.stderr).toBe(0);
    const reply = JSON.parse(child.stdout.trim().split('\n').pop()!);
    expect(reply.code).toBe('WRITE_FAILED');
    expect(reply.message).toContain(parent);
    expect(reply.called).toBe(false);
    expect(listing(parent)).toEqual([]);
  });
});
