/** Display helpers shared by views. */
import type { MemoryEstimate } from '../../core/train/memory.ts';

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined) return '–';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  return n.toLocaleString('en-US');
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function formatLoss(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(4);
}

export function formatTime(ms: number | null | undefined): string {
  return ms ? new Date(ms).toLocaleString() : '–';
}

export const CHART_COLORS = ['#4f6df5', '#e8590c', '#2b8a3e', '#ae3ec9', '#c92a2a', '#0b7285', '#5f3dc4', '#e67700'];

/** The parts of a memory estimate that hold bytes, labelled; they add up to its processBytes (core/train/memory.ts). */
export function memoryParts(e: MemoryEstimate): Array<{ label: string; bytes: number }> {
  return [
    { label: 'Base weights (tensors)', bytes: e.weightsBytes },
    { label: 'Frozen base (native memory)', bytes: e.frozenBytes },
    { label: 'Trainable parameters', bytes: e.trainableBytes },
    { label: 'Gradients', bytes: e.gradientBytes },
    { label: 'Optimizer state', bytes: e.optimizerBytes },
    { label: 'Activations', bytes: e.activationBytes },
    { label: 'Native scratch', bytes: e.nativeScratchBytes },
    { label: 'Runtime (Node, wasm, allocators)', bytes: e.runtimeBytes },
    { label: 'Extra while loading', bytes: e.loadPeakExtraBytes },
  ].filter((p) => p.bytes > 0);
}

/** Per run a hue: its training curve in the dark shade, its validation curve (dashed) in the light one. */
const RUN_PALETTE: Array<[string, string]> = [
  ['#3b5bdb', '#91a7ff'], ['#d9480f', '#ffa94d'], ['#2b8a3e', '#69db7c'], ['#862e9c', '#e599f7'],
  ['#c92a2a', '#ff8787'], ['#0b7285', '#66d9e8'], ['#5f3dc4', '#b197fc'], ['#e67700', '#ffd43b'],
];

/** Compare's colours: every curve its own, a run's two curves in one hue. */
export function runColors(i: number): { train: string; val: string } {
  const [train, val] = RUN_PALETTE[i % RUN_PALETTE.length];
  return { train, val };
}
