/**
 * The project's fixes to tfjs-backend-webgpu 4.22's kernels.
 *
 * AddN: the stock kernel binds every input as a storage buffer of one compute shader, and a
 * device has `maxStorageBuffersPerShaderStage` of them (8 by default, one taken by the output).
 * With more inputs the pipeline is invalid: Dawn reports a validation error and the output is
 * whatever the reused buffer held; nothing throws. Training hits it: a weight used in many places
 * sums its gradients with addN, and so does a gradient norm over many parameters. Like the
 * package's own Concat, we reduce in chunks that fit.
 */
import { getKernel, registerKernel, unregisterKernel } from '../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../tf.ts';

interface WebgpuBackendLike {
  device: { limits: { maxStorageBuffersPerShaderStage: number } };
  disposeData(dataId: object): boolean;
}

let installed = false;

export function installWebgpuKernels(): string[] {
  if (installed) return ['AddN'];
  const stock = getKernel('AddN', 'webgpu');
  if (stock == null) throw new Error('tfjs-backend-webgpu registered no AddN kernel; is it 4.22?');
  const stockFunc = stock.kernelFunc;
  const kernelFunc: KernelFunc = (args) => {
    const backend = args.backend as unknown as WebgpuBackendLike;
    const inputs = args.inputs as unknown as TensorInfo[];
    const maxInputs = Math.max(2, backend.device.limits.maxStorageBuffersPerShaderStage - 1);
    if (inputs.length <= maxInputs) return stockFunc(args);
    const partial: TensorInfo[] = [];
    for (let i = 0; i < inputs.length; i += maxInputs) {
      const chunk = inputs.slice(i, i + maxInputs);
      partial.push(chunk.length === 1 ? chunk[0] : (stockFunc({ ...args, inputs: chunk as never }) as TensorInfo));
    }
    const result = kernelFunc({ ...args, inputs: partial as never }) as TensorInfo;
    for (const p of partial) if (!inputs.includes(p)) backend.disposeData(p.dataId);
    return result;
  };
  const config: KernelConfig = { kernelName: 'AddN', backendName: 'webgpu', kernelFunc };
  unregisterKernel('AddN', 'webgpu');
  registerKernel(config);
  installed = true;
  return ['AddN'];
}
