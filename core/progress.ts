/**
 * A one-line progress bar for terminals (redrawn in place, ≤ 10 redraws/s) that degrades to a
 * plain line every few seconds when stderr is not a TTY (CI logs, pipes).
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export class ProgressBar {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private lastDraw = 0;
  private drawn = false;
  private readonly started = performance.now();

  constructor(
    private readonly label: string,
    private readonly total: number,
    stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.stream = stream;
    this.tty = Boolean(stream.isTTY);
  }

  /** `done` of `total` finished; `detail` is shown after the bar (loss, tokens/s, ...). */
  update(done: number, detail = ''): void {
    const now = performance.now();
    const finished = done >= this.total;
    if (!finished && now - this.lastDraw < (this.tty ? 100 : 5000)) return;
    this.lastDraw = now;
    const elapsed = (now - this.started) / 1000;
    const eta = done > 0 ? (elapsed / done) * (this.total - done) : NaN;
    const width = 24;
    const filled = Math.round((width * Math.min(done, this.total)) / Math.max(this.total, 1));
    const bar = '='.repeat(Math.max(filled - 1, 0)) + (filled > 0 ? '>' : '') + ' '.repeat(width - filled);
    const line = `${this.label} ${done}/${this.total} [${bar}] ${detail} ETA ${formatDuration(eta)}`;
    if (this.tty) {
      this.stream.write(`\r\x1b[2K${line}`);
      this.drawn = true;
    } else {
      this.stream.write(`${line}\n`);
    }
  }

  /** Prints a message above the bar without breaking it. */
  log(message: string): void {
    if (this.tty && this.drawn) this.stream.write('\r\x1b[2K');
    this.stream.write(`${message}\n`);
    this.lastDraw = 0;
  }

  finish(): void {
    if (this.tty && this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}
