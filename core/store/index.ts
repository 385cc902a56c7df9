/** The run store: import from here, not from the files behind it. */
export { openStore, lowrankHome, storeLayout, DATABASE_FILE } from './paths.ts';
export { RunStore, DEFAULT_STALE_HEARTBEAT_MS, newRunId, processAlive } from './store.ts';
export { MIGRATIONS, SCHEMA_VERSION, migrate, schemaVersion, configureConnection } from './migrations.ts';
export type { Migration } from './migrations.ts';
export { fingerprintFile, fingerprintModel } from './fingerprint.ts';
export type { FileFingerprint, ModelFingerprint } from './fingerprint.ts';
export * from './types.ts';
