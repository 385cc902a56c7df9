/**
 * NOLA's compact adapter on disk (core/methods/nola.ts): `nola_config.json` (format, method
 * parameters, wrapped modules) and `nola_adapter.safetensors` (per module its seed [1] and the
 * coefficients α [k], β [k], float32). Reading it back and attaching `nola` with the result gives
 * the trained adapter bit for bit, because every basis is regenerated from its seed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { isJsonObject, readJsonFile } from '../io/hf-folder.ts';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import type { MethodParams } from '../methods/method.ts';
import { withFreshDestination } from './destination.ts';

export const NOLA_CONFIG_FILE = 'nola_config.json';
export const NOLA_WEIGHTS_FILE = 'nola_adapter.safetensors';
const FORMAT = 'lowrank-nola-v1';

export interface NolaAdapterFile {
  params: MethodParams;
  /** Full module paths, in model order. */
  targets: string[];
  /** `<path>.nola_seed`, `<path>.nola_alpha`, `<path>.nola_beta`: AttachContext.initial. */
  tensors: Map<string, Float32Array>;
}

/** Writes `out/` (which must not exist yet). */
export async function writeNolaAdapter(out: string, adapter: NolaAdapterFile, baseModelPath: string): Promise<void> {
  await withFreshDestination(out, (dir) => {
    const config = { format: FORMAT, method: 'nola', base_model_name_or_path: baseModelPath, params: adapter.params, target_modules: adapter.targets };
    fs.writeFileSync(path.join(dir, NOLA_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
    writeSafetensors(
      path.join(dir, NOLA_WEIGHTS_FILE),
      [...adapter.tensors].map(([name, data]) => ({ name, shape: [data.length], data, dtype: 'F32' as const })),
      { format: FORMAT },
    );
  });
}

export function readNolaAdapter(dir: string): NolaAdapterFile {
  const configFile = path.join(dir, NOLA_CONFIG_FILE);
  const raw = readJsonFile(configFile, 'NOLA adapter config', `${dir} is not a NOLA adapter folder (it needs ${NOLA_CONFIG_FILE} and ${NOLA_WEIGHTS_FILE})`);
  if (!isJsonObject(raw) || raw.format !== FORMAT || !isJsonObject(raw.params) || !Array.isArray(raw.target_modules)) {
    throw new LowrankError('BAD_CONFIG', `${configFile}: expected {"format": "${FORMAT}", "params": {...}, "target_modules": [...]}`);
  }
  const file = SafetensorsFile.open(path.join(dir, NOLA_WEIGHTS_FILE));
  const tensors = new Map<string, Float32Array>();
  try {
    for (const name of file.tensors.keys()) tensors.set(name, file.readFloat32(name));
  } finally {
    file.close();
  }
  return { params: raw.params as MethodParams, targets: raw.target_modules as string[], tensors };
}
