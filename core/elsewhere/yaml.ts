/**
 * A YAML writer for the job configs handed to LLaMA-Factory and axolotl: block mappings and
 * sequences of plain values, which is all those configs hold. Both engines read YAML with PyYAML
 * (YAML 1.1), so two of its rules shape the output:
 *  - a float needs a dot and a signed exponent to be read as a float (`1.0e-05`; PyYAML reads
 *    `1e-5` as the *string* "1e-5", and LLaMA-Factory's examples write `1.0e-4` for that reason);
 *  - `yes`, `no`, `on`, `off`, `y`, `n` are booleans, so such strings are quoted (every string
 *    that is not a plain path or identifier is written as a JSON string, which YAML reads verbatim).
 */

export type YamlValue = string | number | boolean | null | YamlValue[] | { [key: string]: YamlValue };

/** The YAML 1.1 float syntax PyYAML's resolver accepts (yaml/resolver.py, tag:yaml.org,2002:float). */
export const PYYAML_FLOAT = /^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?$/;

const YAML11_WORDS = new Set(['y', 'n', 'yes', 'no', 'on', 'off', 'true', 'false', 'null', '~']);
const PLAIN = /^[A-Za-z_/][\w./-]*$/;

export function yamlNumber(n: number): string {
  if (!Number.isFinite(n)) throw new Error(`YAML: cannot write ${n} as a number`);
  if (Number.isInteger(n) && Math.abs(n) < 1e15) return String(n);
  const text = String(n);
  if (!text.includes('e')) return text;
  const [mantissa, exponent] = text.split('e');
  return `${mantissa.includes('.') ? mantissa : `${mantissa}.0`}e${exponent.startsWith('-') || exponent.startsWith('+') ? exponent : `+${exponent}`}`;
}

function scalar(value: string | number | boolean | null): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return yamlNumber(value);
  return PLAIN.test(value) && !YAML11_WORDS.has(value.toLowerCase()) ? value : JSON.stringify(value);
}

function isScalar(value: YamlValue): value is string | number | boolean | null {
  return value === null || typeof value !== 'object';
}

function block(value: YamlValue, indent: string): string[] {
  if (isScalar(value)) return [`${indent}${scalar(value)}`];
  if (Array.isArray(value)) {
    if (value.length === 0) return [`${indent}[]`];
    return value.flatMap((item) => {
      if (isScalar(item) || (Array.isArray(item) && item.length === 0)) return [`${indent}- ${isScalar(item) ? scalar(item) : '[]'}`];
      const lines = block(item, `${indent}  `);
      return [`${indent}- ${lines[0].slice(indent.length + 2)}`, ...lines.slice(1)];
    });
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return [`${indent}{}`];
  return entries.flatMap(([key, item]) => {
    const name = scalar(key);
    if (isScalar(item)) return [`${indent}${name}: ${scalar(item)}`];
    if (Array.isArray(item) ? item.length === 0 : Object.keys(item).length === 0) return [`${indent}${name}: ${Array.isArray(item) ? '[]' : '{}'}`];
    return [`${indent}${name}:`, ...block(item, `${indent}  `)];
  });
}

/**
 * A YAML document. `sections` groups top-level keys under `### title` comments, as the engines'
 * example configs do; keys in no section come last.
 */
export function toYaml(doc: { [key: string]: YamlValue }, sections: Array<{ title: string; keys: string[] }> = [], header: string[] = []): string {
  const lines = header.map((h) => `# ${h}`);
  const written = new Set<string>();
  const emit = (keys: string[]) => {
    for (const key of keys) {
      if (!(key in doc) || written.has(key)) continue;
      written.add(key);
      lines.push(...block({ [key]: doc[key] }, ''));
    }
  };
  for (const section of sections) {
    const present = section.keys.filter((k) => k in doc && !written.has(k));
    if (present.length === 0) continue;
    if (lines.length) lines.push('');
    lines.push(`### ${section.title}`);
    emit(present);
  }
  const rest = Object.keys(doc).filter((k) => !written.has(k));
  if (rest.length) {
    if (lines.length) lines.push('');
    emit(rest);
  }
  return `${lines.join('\n')}\n`;
}
