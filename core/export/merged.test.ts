/**
 * Merged export: the folder loads back (our loader) to exactly the base weights with the given
 * ones replaced, under the names the base used, with the base's config and tokenizer; shards and
 * half-precision bases; errors leave nothing behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { CheckpointReader, SafetensorsFile } from '../io/safetensors.ts';
import { writeModelFolder } from '../io/model-folder.ts';
import { loadModel } from '../models/load.ts';
import { float16ToFloat32, float32ToFloat16 } from '../io/dtype.ts';
import { trainByteLevelBpe, writeTokenizerFolder } from '../tokenize/bpe-trainer.ts';
import { makeTinyCheckpoint, writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { exportMerged } from './merged.ts';
import { scratch } from './test-models.ts';
import type { HostTensor } from './weights.ts';

const root = scratch('merged');
beforeAll(async () => {
  await tf.setBackend('cpu');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function randomLike(shape: number[], seed: number): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(seed * 1000 + i * 0.37);
  return { shape, data };
}

const sameBits = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe('exportMerged', () => {
  it('GPT-2 without the transformer. prefix: names kept, buffers dropped, replaced weights loaded back exactly', async () => {
    const baseDir = path.join(root, 'gpt2');
    const base = writeTinyCheckpoint(baseDir, 'gpt2', 21);
    const cAttn = base.tensors.find((t) => t.name === 'h.0.attn.c_attn.weight')!;
    const cFc = base.tensors.find((t) => t.name === 'h.1.mlp.c_fc.weight')!;
    const asTensor = tf.tensor(randomLike(cAttn.shape, 1).data, cAttn.shape);
    const asHost = randomLike(cFc.shape, 2);
    const merged = new Map<string, tf.Tensor | HostTensor>([
      ['transformer.h.0.attn.c_attn.weight', asTensor], // the project's name
      ['h.1.mlp.c_fc.weight', asHost], // the stored name
    ]);
    const out = path.join(root, 'gpt2-merged');
    const result = await exportMerged(out, baseDir, merged, { dtype: 'float32' });
    expect(result).toEqual({ dtype: 'float32', tensors: 4 + 2 * 12, replaced: 2 });
    expect(asTensor.isDisposed).toBe(false);

    expect(fs.readdirSync(out).sort()).toEqual(['config.json', 'model.safetensors']);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config).toEqual({ ...base.config, torch_dtype: 'float32' });

    const file = SafetensorsFile.open(path.join(out, 'model.safetensors'));
    const stored = [...file.tensors.keys()].sort();
    file.close();
    const expectedNames = base.tensors.map((t) => t.name).filter((n) => !n.endsWith('.attn.bias')).sort();
    expect(stored).toEqual(expectedNames);

    const reader = CheckpointReader.open(out);
    for (const t of base.tensors) {
      if (t.name.endsWith('.attn.bias')) continue;
      const want = t === cAttn ? (asTensor.dataSync() as Float32Array) : t === cFc ? asHost.data : t.data;
      expect(sameBits(reader.readFloat32(t.name), want), t.name).toBe(true);
    }
    reader.close();
    const model = loadModel(out); // and our own loader takes it
    expect(sameBits(model.weight('transformer.h.1.mlp.c_fc.weight').dataSync() as Float32Array, asHost.data)).toBe(true);
    model.dispose();
    asTensor.dispose();
  });

  it('Llama: shards, tokenizer files, and a float16 base kept in float16 with dtype "base"', async () => {
    const baseDir = path.join(root, 'llama-f16');
    const tiny = makeTinyCheckpoint('llama-untied', 4);
    writeModelFolder(baseDir, tiny.config, tiny.tensors, { dtype: 'float16' });
    await writeTokenizerFolder(baseDir, trainByteLevelBpe(['hello world, hello there'], { vocabSize: 260, specialTokens: ['<s>'] }), {
      bos: '<s>',
      eos: '<s>',
      chatTemplate: '{{ messages }}',
    });
    fs.writeFileSync(path.join(baseDir, 'merges.txt'), '#version: 0.2\n');
    const replaced = 'model.layers.1.self_attn.o_proj.weight';
    const shape = tiny.tensors.find((t) => t.name === replaced)!.shape;
    const value = randomLike(shape, 3);

    const out = path.join(root, 'llama-merged');
    const result = await exportMerged(out, baseDir, new Map([[replaced, value]]), { dtype: 'base', maxShardBytes: 20_000 });
    expect(result.dtype).toBe('float16');
    const files = fs.readdirSync(out).sort();
    expect(files).toContain('model.safetensors.index.json');
    expect(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length).toBeGreaterThan(2);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'merges.txt']) expect(files).toContain(f);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).torch_dtype).toBe('float16');

    const baseReader = CheckpointReader.open(baseDir);
    const reader = CheckpointReader.open(out);
    expect(reader.names().sort()).toEqual(baseReader.names().sort());
    for (const name of baseReader.names()) {
      expect(reader.info(name).dtype).toBe('F16');
      const want = name === replaced ? float16ToFloat32(float32ToFloat16(value.data)) : baseReader.readFloat32(name);
      expect(sameBits(reader.readFloat32(name), want), name).toBe(true);
    }
    reader.close();
    baseReader.close();
    loadModel(out).dispose();
  });

  it('refuses weights of another model and an existing destination, writing nothing', async () => {
    const baseDir = path.join(root, 'llama-small');
    writeTinyCheckpoint(baseDir, 'llama-gqa-tied', 2);
    const out = path.join(root, 'never');
    const attempt = async (weights: Map<string, HostTensor>, dest = out) => {
      try {
        await exportMerged(dest, baseDir, weights, { dtype: 'float32' });
      } catch (e) {
        expect(e).toBeInstanceOf(LowrankError);
        return e as LowrankError;
      }
      throw new Error('expected an error');
    };
    const unknown = await attempt(new Map([['lm_head.weight', randomLike([96, 32], 1)]])); // tied: no lm_head
    expect(unknown.code).toBe('MISSING_WEIGHT');
    expect(unknown.message).toContain('"lm_head.weight" is not a weight of the base model');
    const wrongShape = await attempt(new Map([['model.norm.weight', randomLike([31], 1)]]));
    expect(wrongShape.code).toBe('SHAPE_MISMATCH');
    expect(fs.existsSync(out)).toBe(false);
    const existing = await attempt(new Map(), baseDir);
    expect(existing.message).toContain('already exists');
  });
});
