/**
 * Importing this module registers every method (each file calls registerMethod on load). The
 * base of a variant is imported before it: `lora` before `rslora`, `dora`, `pissa`, `loraplus`.
 */
import './full.ts';
import './lora.ts';
import './dora.ts';
import './pissa.ts';
import './vera.ts';
import './randlora.ts';
import './loraxs.ts';
import './lorasb.ts';
import './svfit.ts';
import './nola.ts';
import './dylora.ts';
import './sora.ts';
import './galore.ts';
import './fira.ts';
import './frugal.ts';
import './galore-dct.ts';
import './sltrain.ts';
import './lost.ts';
import './fedsvd.ts';
import './diffora.ts';
import './loram.ts';
import './pela.ts';
import './allora.ts';
import './switchlora.ts';
import './lorapro.ts';
import './sara.ts';
import './drslora.ts';

export { getMethod, listMethods, registerMethod, methodRegistry, MethodRegistry } from './registry.ts';
export { resolveTargets, targetableModules, ALL_LINEAR } from './targets.ts';
export { resolveParams } from './params.ts';
export type { AttachContext, AttachedMethod, Method, MethodInfo, MethodParams, SchemaField } from './method.ts';
