/**
 * Where a JSON text goes wrong, as line/column. V8's JSON.parse messages are inconsistent (some
 * give a position, others quote a snippet of the input that may span lines), and our errors must
 * be one line naming the place at fault, so after JSON.parse fails we re-scan the text with this
 * small strict RFC 8259 checker to find the first bad character.
 */

export interface JsonErrorLocation {
  /** 0-based character offset into the text. */
  offset: number;
  /** 1-based. */
  line: number;
  /** 1-based. */
  column: number;
  reason: string;
}

/**
 * The scan recurses once per nesting level; past this depth it stops with an error at that place
 * instead of overflowing the stack (a corrupt or hostile file can open 100,000 brackets). Real
 * config, header and dataset files nest a handful of levels.
 */
export const MAX_JSON_DEPTH = 1000;

class JsonScanError extends Error {
  constructor(
    readonly offset: number,
    readonly reason: string,
  ) {
    super(reason);
  }
}

/** First syntax error in `text` (nesting past MAX_JSON_DEPTH counts as one), or null when it is valid JSON. */
export function locateJsonError(text: string): JsonErrorLocation | null {
  try {
    const end = scanValue(text, skipWhitespace(text, 0), 0);
    const after = skipWhitespace(text, end);
    if (after < text.length) throw new JsonScanError(after, 'unexpected text after the JSON value');
    return null;
  } catch (e) {
    if (!(e instanceof JsonScanError)) throw e;
    return { offset: e.offset, ...lineAndColumn(text, e.offset), reason: e.reason };
  }
}

/** One-line description: "unexpected '}' at line 3 column 7". */
export function describeJsonError(text: string): string {
  const where = locateJsonError(text);
  if (!where) return 'valid JSON';
  return `${where.reason} at line ${where.line} column ${where.column}`;
}

function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

function skipWhitespace(text: string, i: number): number {
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) break;
    i++;
  }
  return i;
}

function unexpected(text: string, i: number, wanted: string): JsonScanError {
  if (i >= text.length) return new JsonScanError(i, `unexpected end of input, expected ${wanted}`);
  return new JsonScanError(i, `unexpected ${JSON.stringify(text[i])}, expected ${wanted}`);
}

/** Scans one value starting at `i` (no leading whitespace) at nesting `depth`; returns the offset just past it. */
function scanValue(text: string, i: number, depth: number): number {
  const c = text[i];
  if ((c === '{' || c === '[') && depth >= MAX_JSON_DEPTH) {
    throw new JsonScanError(i, `arrays and objects nested deeper than ${MAX_JSON_DEPTH} levels`);
  }
  if (c === '{') return scanObject(text, i, depth + 1);
  if (c === '[') return scanArray(text, i, depth + 1);
  if (c === '"') return scanString(text, i);
  if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return scanNumber(text, i);
  for (const literal of ['true', 'false', 'null']) {
    if (text.startsWith(literal, i)) return i + literal.length;
  }
  throw unexpected(text, i, 'a value');
}

function scanObject(text: string, i: number, depth: number): number {
  i = skipWhitespace(text, i + 1);
  if (text[i] === '}') return i + 1;
  for (;;) {
    if (text[i] !== '"') throw unexpected(text, i, 'a double-quoted property name');
    i = skipWhitespace(text, scanString(text, i));
    if (text[i] !== ':') throw unexpected(text, i, "':'");
    i = skipWhitespace(text, scanValue(text, skipWhitespace(text, i + 1), depth));
    if (text[i] === '}') return i + 1;
    if (text[i] !== ',') throw unexpected(text, i, "',' or '}'");
    i = skipWhitespace(text, i + 1);
  }
}

function scanArray(text: string, i: number, depth: number): number {
  i = skipWhitespace(text, i + 1);
  if (text[i] === ']') return i + 1;
  for (;;) {
    i = skipWhitespace(text, scanValue(text, i, depth));
    if (text[i] === ']') return i + 1;
    if (text[i] !== ',') throw unexpected(text, i, "',' or ']'");
    i = skipWhitespace(text, i + 1);
  }
}

function scanString(text: string, i: number): number {
  for (i = i + 1; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) return i + 1;
    if (c < 0x20) throw new JsonScanError(i, 'control character inside a string (escape it, e.g. \\n)');
    if (c === 0x5c) {
      const e = text[i + 1];
      if (e === 'u') {
        if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) throw new JsonScanError(i, 'bad \\u escape');
        i += 5;
      } else if (e !== undefined && '"\\/bfnrt'.includes(e)) {
        i += 1;
      } else {
        throw new JsonScanError(i, 'bad escape in a string');
      }
    }
  }
  throw new JsonScanError(i, 'unterminated string');
}

const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

function scanNumber(text: string, i: number): number {
  NUMBER.lastIndex = i;
  const match = NUMBER.exec(text);
  if (!match) throw unexpected(text, i + 1, 'a digit');
  const end = i + match[0].length;
  const next = text[end];
  // "01", "1.", "1e" and the like: the regex stops early, and the leftover is the error.
  if (next !== undefined && /[0-9.eE+-]/.test(next)) throw unexpected(text, end, 'a valid number');
  return end;
}
