/**
 * The engine window's backend: tfjs-backend-webgpu on the window's own navigator.gpu (Electron's
 * built-in WebGPU: Vulkan, Metal or D3D12, any vendor). The package is imported statically here
 * so that it is inside the window's bundle (bundle.ts); core/backend/webgpu.ts is handed it.
 * Forced, so it never quietly falls back to wasm: main sends a job here only after the window
 * reported an adapter it accepts (host.ts), and a job that cannot get its GPU fails saying why.
 */
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { provideWebgpuModule } from '../../backend/webgpu.ts';
import { initBackend, type BackendInfo } from '../../backend/index.ts';

export function startWindowBackend(): Promise<BackendInfo> {
  provideWebgpuModule(webgpuModule);
  return initBackend({ backend: 'webgpu' });
}
