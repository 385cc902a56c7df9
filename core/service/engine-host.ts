/**
 * The engine process of the desktop app: hosts StudioService and speaks to Electron's main over
 * the fork IPC channel. Main forwards the renderer's calls ({id, call, request}), grants dialog
 * picks ({grant}) and relays events back to the window. Training jobs run in a hidden engine
 * window (GPU, through main: engine-window/) when main offers one (LOWRANK_ENGINE_WINDOW=1) and
 * it has a usable adapter; otherwise, like every other job, in this process's children.
 */
import { StudioService, toWireError } from '../service.ts';
import type { ServerFrame } from '../contract.ts';
import { WindowJobRunner } from './engine-window/window-jobs.ts';
import type { EngineToMain, MainToEngine } from './engine-window/protocol.ts';

export type HostMessage =
  | { id: number; call: string; request: unknown }
  | { grant: string; kind: 'model' | 'dataset' | 'directory' }
  /** After a crash of the previous engine process: its runs failed with it. */
  | { failRuns: string[]; message: string }
  | { engineWindow: MainToEngine };

/** What this process sends main: service frames, and engine-window requests. */
export type HostFrame = ServerFrame | { engineWindow: EngineToMain };

const home = process.env.LOWRANK_HOME;
if (!home) throw new Error('engine-host: LOWRANK_HOME must name the run store folder');
const send = (frame: HostFrame) => process.send?.(frame);
const windows =
  process.env.LOWRANK_ENGINE_WINDOW === '1'
    ? new WindowJobRunner({
        toMain: (m) => send({ engineWindow: m }),
        onDeclined: (reason) => console.error(`lowrank: training runs in a Node process, not on the GPU: ${reason}`),
      })
    : null;
const service = new StudioService({ home, transport: 'electron', fileDialog: true, jobRunner: windows?.run });
service.subscribe((event) => send({ event }));

process.on('message', (m: HostMessage) => {
  if ('engineWindow' in m) return windows?.fromMain(m.engineWindow);
  if ('grant' in m) return service.grant(m.grant, m.kind);
  if ('failRuns' in m) return service.failRuns(m.failRuns, 'ENGINE_CRASHED', m.message);
  service.call(m.call, m.request).then(
    (reply) => send({ id: m.id, ok: true, reply }),
    (e: unknown) => send({ id: m.id, ok: false, error: toWireError(e) }),
  );
});
process.on('disconnect', () => {
  windows?.disconnect();
  void service.close().then(() => process.exit(0));
});
