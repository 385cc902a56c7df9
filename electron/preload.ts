/**
 * Preload script: will expose `window.studio` (one method per call of core/contract.ts) through
 * contextBridge. Deliberately empty until the contract exists: the renderer gets no Node APIs.
 */
export {};
