/**
 * Which linear modules a method wraps, from `--target`: module names as peft's `target_modules`
 * reads them (a name matches a module whose full path equals it or ends with `.<name>`, so
 * `q_proj`, `attn.c_proj` and `model.layers.0.self_attn.q_proj` all work), or `all-linear`:
 * every linear module except the output layer, as peft's INCLUDE_LINEAR_LAYERS_SHORTHAND.
 */
import { LowrankError } from '../errors.ts';
import type { CausalLM } from '../models/causal-lm.ts';

export const ALL_LINEAR = 'all-linear';

/** Every module a target may name: the model's linear modules, plus an untied `lm_head`. */
export function targetableModules(model: CausalLM): string[] {
  const modules = model.linearModules();
  if (model.hasWeight('lm_head.weight')) modules.push('lm_head');
  return modules;
}

/** Full module paths, in model order, without repeats. */
export function resolveTargets(model: CausalLM, spec: string[] | typeof ALL_LINEAR): string[] {
  if (spec === ALL_LINEAR) return model.linearModules();
  if (!Array.isArray(spec) || spec.length === 0) {
    throw new LowrankError('BAD_ARGUMENT', `no target modules given; name some (${shortNames(targetableModules(model)).join(', ')}) or use ${ALL_LINEAR}`);
  }
  const modules = targetableModules(model);
  const chosen = new Set<string>();
  for (const name of spec) {
    if (name === ALL_LINEAR) {
      for (const path of model.linearModules()) chosen.add(path);
      continue;
    }
    const matches = modules.filter((path) => path === name || path.endsWith(`.${name}`));
    if (matches.length === 0) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `target module "${name}" matches no linear module of this ${model.config.architecture}; valid names: ${shortNames(modules).join(', ')} (or full paths such as ${modules[0]}, or ${ALL_LINEAR})`,
      );
    }
    for (const path of matches) chosen.add(path);
  }
  return modules.filter((path) => chosen.has(path));
}

/** Last path component of each module, sorted, without repeats (`q_proj`, `c_attn`). */
export function shortNames(paths: string[]): string[] {
  return [...new Set(paths.map((p) => p.slice(p.lastIndexOf('.') + 1)))].sort();
}

/**
 * peft's `target_modules` for an exported adapter: the sorted short names when they select
 * exactly the wrapped modules (the usual case), else the sorted full paths, so that peft wraps
 * the same modules on load and no others.
 */
export function peftTargetModules(model: CausalLM, targets: string[]): string[] {
  const short = shortNames(targets);
  const wanted = new Set(targets);
  const selected = targetableModules(model).filter((p) => short.includes(p.slice(p.lastIndexOf('.') + 1)));
  const exact = selected.length === wanted.size && selected.every((p) => wanted.has(p));
  return exact ? short : [...targets].sort();
}
