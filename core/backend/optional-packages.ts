/**
 * Probing optional packages (optionalDependencies whose install may have failed or been skipped:
 * tfjs-node[-gpu] downloads libtensorflow, webgpu ships Dawn) without letting a missing one take
 * the process down, and with a reason a user can act on.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export type Attempt<T> = { ok: true; value: T } | { ok: false; reason: string };

const require = createRequire(import.meta.url);

function packageDir(pkg: string): string | null {
  try {
    return dirname(require.resolve(`${pkg}/package.json`));
  } catch {
    return null;
  }
}

export function packageInstalled(pkg: string): boolean {
  return packageDir(pkg) != null;
}

/**
 * tfjs-node[-gpu] keep their addon in lib/napi-v<N>/tfjs_binding.node, fetched by the install
 * script together with libtensorflow (PERFORMANCE.md §5). Without it the import cannot succeed.
 */
export function nativeAddonProblem(pkg: string): string | null {
  const dir = packageDir(pkg);
  if (dir == null) return `${pkg} is not installed`;
  const lib = join(dir, 'lib');
  const found = existsSync(lib) &&
    readdirSync(lib).some((d) => d.startsWith('napi-v') && existsSync(join(lib, d, 'tfjs_binding.node')));
  return found ? null
    : `${pkg} is installed without its native addon (lib/napi-v*/tfjs_binding.node); its install script ` +
      `downloads libtensorflow and needs network access: run 'npm rebuild ${pkg}' where that is allowed`;
}

/** Dynamic import that reports the first line of the failure instead of throwing. */
export async function tryImport<T = unknown>(specifier: string): Promise<Attempt<T>> {
  try {
    return { ok: true, value: (await import(specifier)) as T };
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    return { ok: false, reason: message.split('\n')[0] };
  }
}
