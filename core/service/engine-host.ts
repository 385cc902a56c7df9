/**
 * The engine process of the desktop app: hosts StudioService and speaks to Electron's main over
 * the fork IPC channel. Main forwards the renderer's calls ({id, call, request}), grants dialog
 * picks ({grant}) and relays events back to the window. Training jobs are this process's children.
 */
import { StudioService, toWireError } from '../service.ts';
import type { ServerFrame } from '../contract.ts';

export type HostMessage =
  | { id: number; call: string; request: unknown }
  | { grant: string; kind: 'model' | 'dataset' | 'directory' }
  /** After a crash of the previous engine process: its runs failed with it. */
  | { failRuns: string[]; message: string };

const home = process.env.LOWRANK_HOME;
if (!home) throw new Error('engine-host: LOWRANK_HOME must name the run store folder');
const service = new StudioService({ home, transport: 'electron', fileDialog: true });
const send = (frame: ServerFrame) => process.send?.(frame);
service.subscribe((event) => send({ event }));

process.on('message', (m: HostMessage) => {
  if ('grant' in m) return service.grant(m.grant, m.kind);
  if ('failRuns' in m) return service.failRuns(m.failRuns, 'ENGINE_CRASHED', m.message);
  service.call(m.call, m.request).then(
    (reply) => send({ id: m.id, ok: true, reply }),
    (e: unknown) => send({ id: m.id, ok: false, error: toWireError(e) }),
  );
});
process.on('disconnect', () => {
  void service.close().then(() => process.exit(0));
});
