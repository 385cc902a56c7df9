/** A download's progress: bytes of the total, the rate over the last few seconds, the time left. */
export interface PullProgress {
  repo: string;
  /** The file being transferred, or null before the first and after the last. */
  file: string | null;
  bytes: number;
  totalBytes: number;
  bytesPerSecond: number;
  /** NaN until a rate is known. */
  etaSeconds: number;
}

/** Rate over the last few seconds and the time left; also throttles the reports. */
export class TransferMeter {
  private readonly samples: Array<[number, number]> = [];
  private lastReport = 0;
  done = 0;
  file: string | null = null;

  constructor(
    private readonly repo: string,
    readonly total: number,
    private readonly report?: (p: PullProgress) => void,
  ) {
    this.samples.push([performance.now(), 0]);
  }

  add(bytes: number): void {
    this.done += bytes;
    const now = performance.now();
    this.samples.push([now, this.done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    if (now - this.lastReport >= 100) this.emit(now);
  }

  /** Bytes a resumed file already had: counted as done, not as transfer rate. */
  resumedFrom(bytes: number): void {
    if (bytes === 0) return;
    this.done += bytes;
    this.samples.splice(0, this.samples.length, [performance.now(), this.done]);
  }

  emit(now = performance.now()): void {
    this.lastReport = now;
    const [t0, b0] = this.samples[0];
    const seconds = (now - t0) / 1000;
    const rate = seconds > 0 ? (this.done - b0) / seconds : 0;
    this.report?.({ repo: this.repo, file: this.file, bytes: this.done, totalBytes: this.total, bytesPerSecond: rate, etaSeconds: rate > 0 ? (this.total - this.done) / rate : NaN });
  }
}
