/** Format detection, per-record validation reasons, and the normalised shapes. */
import { describe, expect, it } from 'vitest';
import { ALPACA_PROMPT_NO_INPUT, detectFormat, formatOfRecord, normalizeRecord, parseFormat, RecordError, type DatasetFormat } from './formats.ts';
import type { RawEntry } from './readers.ts';

const entries = (...records: Array<Record<string, unknown>>): RawEntry[] => records.map((record, i) => ({ where: `f:${i + 1}`, record }));

describe('detectFormat', () => {
  const cases: Array<[DatasetFormat, Record<string, unknown>]> = [
    ['text', { text: 'hello', id: 3 }],
    ['prompt-completion', { prompt: 'a', completion: 'b' }],
    ['alpaca', { instruction: 'a', input: '', output: 'b' }],
    ['chat', { messages: [{ role: 'user', content: 'hi' }] }],
    ['chat', { conversations: [{ role: 'user', content: 'hi' }] }],
    ['sharegpt', { conversations: [{ from: 'human', value: 'hi' }] }],
    ['sharegpt', { messages: [{ from: 'human', value: 'hi' }] }],
  ];
  for (const [format, record] of cases) {
    it(`${Object.keys(record).join('+')} -> ${format}`, () => {
      expect(formatOfRecord(record)).toBe(format);
      expect(detectFormat(entries(record), 'f')).toBe(format);
    });
  }

  it('goes by the majority of the first records, ignoring unreadable ones', () => {
    const list = [{ where: 'f:1', problem: 'bad' } as RawEntry, ...entries({ text: 'x' }, { prompt: 'a', completion: 'b' }, { prompt: 'c', completion: 'd' })];
    expect(detectFormat(list, 'f')).toBe('prompt-completion');
  });

  it('names the keys it saw and the way out when nothing matches', () => {
    expect(() => detectFormat(entries({ question: 'q', answer: 'a' }), 'f.jsonl')).toThrow(
      'f.jsonl: cannot tell the dataset format: the records have keys "question", "answer"; expected "text", "prompt"+"completion", ' +
        '"instruction"+"output" (Alpaca), "messages" (chat) or "conversations" (ShareGPT); rename the fields or force a format with --format text|prompt-completion|alpaca|chat|sharegpt',
    );
  });

  it('parses --format', () => {
    expect(parseFormat('sharegpt')).toBe('sharegpt');
    expect(parseFormat('auto')).toBe('auto');
    expect(() => parseFormat('openai')).toThrow('--format must be one of text, prompt-completion, alpaca, chat, sharegpt (or auto), got "openai"');
  });
});

const reason = (record: Record<string, unknown>, format: DatasetFormat, hasChatTemplate = false): string => {
  try {
    normalizeRecord(record, format, { hasChatTemplate });
  } catch (e) {
    if (e instanceof RecordError) return e.message;
    throw e;
  }
  return 'valid';
};

describe('validation reasons', () => {
  it.each([
    [{ prompt: 'a' }, 'prompt-completion', 'missing "completion"'],
    [{ prompt: 'a', completion: '  ' }, 'prompt-completion', 'empty completion'],
    [{ prompt: 1, completion: 'b' }, 'prompt-completion', '"prompt" must be a string, got number 1'],
    [{ prompt: '', completion: 'b' }, 'prompt-completion', 'valid'],
    [{ instruction: 'a' }, 'alpaca', 'missing "output"'],
    [{ instruction: 'a', output: '' }, 'alpaca', 'empty output'],
    [{ instruction: 'a', output: 'b', input: 3 }, 'alpaca', '"input" must be a string, got number 3'],
    [{ text: null }, 'text', '"text" must be a string, got null'],
    [{ text: '' }, 'text', 'empty "text"'],
    [{ messages: [] }, 'chat', '"messages" is empty'],
    [{ messages: 'hi' }, 'chat', '"messages" must be an array, got string "hi"'],
    [{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'bot', content: 'c' }] }, 'chat',
      '"messages"[2].role must be one of system/user/assistant, got string "bot"'],
    [{ messages: [{ role: 'user', content: ['a'] }] }, 'chat', '"messages"[0].content must be a string, got an array'],
    [{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: ' ' }] }, 'chat', '"messages"[1].content is an empty assistant reply'],
    [{ messages: [{ role: 'user', content: 'a' }] }, 'chat', '"messages" has no assistant reply to train on'],
    [{ messages: [{ role: 'user', content: 'a' }, { role: 'system', content: 's' }, { role: 'assistant', content: 'b' }] }, 'chat',
      '"messages"[1] is a system message; only the first message may be one'],
    [{ messages: '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]' }, 'chat', 'valid'],
    [{ conversations: [{ from: 'human', value: 'a' }, { from: 'bard', value: 'b' }] }, 'sharegpt', '"conversations"[1].from must be one of human/gpt/system, got string "bard"'],
    [{ conversations: [{ from: 'human' }] }, 'sharegpt', '"conversations"[0] is missing "value"'],
  ] as Array<[Record<string, unknown>, DatasetFormat, string]>)('%j as %s: %s', (record, format, expected) => {
    expect(reason(record, format)).toBe(expected);
  });
});

describe('normalised records', () => {
  it('prompt/completion: raw prompt untrained, completion trained', () => {
    expect(normalizeRecord({ prompt: 'Q: 2+2?\nA:', completion: ' 4' }, 'prompt-completion', { hasChatTemplate: true })).toEqual({
      kind: 'segments',
      segments: [{ text: 'Q: 2+2?\nA:', train: false }, { text: ' 4', train: true }],
    });
  });

  it('Alpaca without a chat template: the Stanford Alpaca prompt, verbatim', () => {
    const out = normalizeRecord({ instruction: 'Name a color.', input: '', output: 'Blue $&' }, 'alpaca', { hasChatTemplate: false });
    expect(out).toEqual({
      kind: 'segments',
      segments: [
        {
          text:
            'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
            '### Instruction:\nName a color.\n\n### Response:\n',
          train: false,
        },
        { text: 'Blue $&', train: true },
      ],
    });
    const withInput = normalizeRecord({ instruction: 'Translate $1.', input: 'cheese', output: 'fromage' }, 'alpaca', { hasChatTemplate: false });
    expect(withInput.kind === 'segments' && withInput.segments[0]!.text).toBe(
      'Below is an instruction that describes a task, paired with an input that provides further context. ' +
        'Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate $1.\n\n### Input:\ncheese\n\n### Response:\n',
    );
    expect(ALPACA_PROMPT_NO_INPUT).toContain('{instruction}');
  });

  it('Alpaca with a chat template: system / user (instruction + input) / assistant', () => {
    const out = normalizeRecord({ instruction: 'Translate.', input: 'cheese', output: 'fromage', system: 'Be brief.' }, 'alpaca', { hasChatTemplate: true });
    expect(out).toEqual({
      kind: 'chat',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Translate.\n\ncheese' },
        { role: 'assistant', content: 'fromage' },
      ],
    });
  });

  it('ShareGPT: human/gpt/system -> user/assistant/system', () => {
    const out = normalizeRecord(
      { conversations: [{ from: 'system', value: 's' }, { from: 'human', value: 'h' }, { from: 'gpt', value: 'g' }] },
      'sharegpt',
      { hasChatTemplate: false },
    );
    expect(out).toEqual({
      kind: 'chat',
      messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'h' }, { role: 'assistant', content: 'g' }],
    });
  });
});
