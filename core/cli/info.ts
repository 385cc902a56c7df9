/** `lowrank info` and `lowrank inspect`. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { initBackend, measureMatmulGflops } from '../backend/index.ts';
import { openCheckpoint } from '../models/load.ts';
import { parameterCount, targetableModules } from '../models/config.ts';
import type { Flags } from '../cli.ts';
import { printJson, requireString } from './flags.ts';

function packageVersion(name: string): string | null {
  try {
    return (createRequire(import.meta.url)(`${name}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}

export async function infoCommand(flags: Flags): Promise<void> {
  const backend = await initBackend();
  const gflops = await measureMatmulGflops({ m: 512, k: 512, n: 512, seconds: 1 });
  const info = {
    backend: backend.backend,
    adapter: backend.adapter ?? null,
    wasmSimd: backend.wasmSimd ?? null,
    wasmThreads: backend.wasmThreads ?? null,
    kernels: backend.kernels,
    nativeAddon: backend.nativeAddon ?? null,
    skipped: backend.skipped ?? [],
    matmulGflops: Number(gflops.toFixed(2)),
    versions: {
      lowrankStudio: (JSON.parse(fs.readFileSync(path.join(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string }).version,
      node: process.versions.node,
      tfjs: backend.tfjsVersion,
      tfjsBackendWasm: packageVersion('@tensorflow/tfjs-backend-wasm'),
      tfjsNode: packageVersion('@tensorflow/tfjs-node'),
      webgpu: packageVersion('webgpu'),
    },
    cpus: (await import('node:os')).cpus().length,
  };
  if (flags.json) return printJson(info);
  console.log(`backend      ${info.backend}${info.adapter ? ` (${info.adapter})` : ''}`);
  if (info.backend === 'wasm') console.log(`wasm         SIMD ${info.wasmSimd ? 'on' : 'off'}, ${info.wasmThreads ?? 1} thread(s)`);
  console.log(`kernels      ${info.kernels.length ? info.kernels.join(', ') : '(stock)'}`);
  if (info.nativeAddon != null) {
    console.log(`native BLAS  ${'library' in info.nativeAddon
      ? `${info.nativeAddon.library}, ${info.nativeAddon.threads} thread(s): matmuls run there`
      : `not used (${info.nativeAddon.unavailable}); matmuls run on the wasm kernels`}`);
  }
  for (const s of info.skipped) console.log(`skipped      ${s.backend}: ${s.reason}`);
  console.log(`matmul       ${info.matmulGflops} GFLOP/s (512×512×512, float32)`);
  console.log(`versions     node ${info.versions.node}, tfjs ${info.versions.tfjs}`);
  console.log(`cpus         ${info.cpus}`);
}

export async function inspectCommand(flags: Flags): Promise<void> {
  const dir = requireString(flags, 'model', 'a Hugging Face model folder');
  const { config, reader, dtypes } = openCheckpoint(dir);
  reader.close();
  const files = fs.readdirSync(dir).filter((f) => !f.startsWith('.')).sort();
  const result = {
    path: path.resolve(dir),
    architecture: config.architecture,
    modelType: (config.raw.model_type as string | undefined) ?? null,
    parameters: parameterCount(config),
    dtype: [...dtypes].join(', '),
    torchDtype: config.torchDtype,
    layers: config.numLayers,
    hiddenSize: config.hiddenSize,
    intermediateSize: config.intermediateSize,
    heads: config.numHeads,
    kvHeads: config.numKvHeads,
    headDim: config.headDim,
    vocabSize: config.vocabSize,
    maxPositions: config.maxPositions,
    tiedEmbeddings: config.tieWordEmbeddings,
    ropeTheta: config.family === 'llama' ? config.ropeTheta : null,
    ropeScaling: config.ropeScaling,
    slidingWindow: config.slidingWindow,
    targetModules: targetableModules(config),
    files,
  };
  if (flags.json) return printJson(result);
  console.log(`${result.path}`);
  console.log(`architecture  ${result.architecture} (${result.modelType ?? '?'})`);
  console.log(`parameters    ${result.parameters.toLocaleString('en-US')} (${(result.parameters / 1e6).toFixed(2)} M), stored as ${result.dtype}`);
  console.log(`layers        ${result.layers} × hidden ${result.hiddenSize}, MLP ${result.intermediateSize}`);
  console.log(`attention     ${result.heads} heads, ${result.kvHeads} key/value heads, head dim ${result.headDim}${result.slidingWindow ? `, sliding window ${result.slidingWindow}` : ''}`);
  console.log(`vocabulary    ${result.vocabSize}${result.tiedEmbeddings ? ' (tied input/output embeddings)' : ''}`);
  console.log(`context       ${result.maxPositions} positions${result.ropeScaling ? `, rope_scaling ${result.ropeScaling.type}` : ''}`);
  console.log(`targets       ${result.targetModules.join(', ')} (or all-linear)`);
  console.log(`files         ${result.files.join(', ')}`);
}
