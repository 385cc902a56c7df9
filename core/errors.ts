/**
 * Typed errors. Every error a user can cause (a bad file, a bad flag, a bad record) is a
 * LowrankError with a stable `code` and a one-line message that names the file/field/line at
 * fault and, where there is one, the fix. The CLI prints `message` alone and exits 2; `--debug`
 * adds the stack. Errors cross IPC as `{code, message}`.
 */
export type ErrorCode =
  | 'BAD_ARGUMENT'
  | 'FILE_NOT_FOUND'
  | 'BAD_SAFETENSORS'
  | 'PICKLE_REFUSED'
  | 'BAD_CONFIG'
  | 'UNKNOWN_ARCHITECTURE'
  | 'SHAPE_MISMATCH'
  | 'MISSING_WEIGHT'
  | 'BAD_TOKENIZER'
  | 'BAD_DATA'
  | 'BACKEND_UNAVAILABLE'
  | 'WRITE_FAILED'
  | 'RUN_NOT_FOUND'
  | 'BAD_RUN_STATE'
  | 'STORE_TOO_NEW'
  | 'STORE_UNAVAILABLE'
  | 'DOES_NOT_FIT'
  /** The Hugging Face Hub refused access: private or gated without a (valid) token. */
  | 'HUB_ACCESS'
  /** A download could not reach the Hub or was interrupted (resumable). */
  | 'NETWORK'
  /** A downloaded file's hash differs from the one the Hub publishes. */
  | 'INTEGRITY'
  /** Training diverged: a NaN or infinite loss, gradient or weight. */
  | 'NUMERIC';

export class LowrankError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'LowrankError';
    this.code = code;
  }
  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isLowrankError(e: unknown): e is LowrankError {
  return e instanceof LowrankError;
}
