/** loadDataset / previewDataset end to end on small files written here. */
import { afterAll, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { formatPreview, loadDataset, previewDataset } from './dataset.ts';
import { jsonl, removeTestTokenizers, testTokenizer, writeFixtures } from './test-tokenizers.ts';

const chat = (user: string, reply: string) => ({ messages: [{ role: 'user', content: user }, { role: 'assistant', content: reply }] });

const files = writeFixtures({
  'chat.jsonl': jsonl(chat('Hello there', 'Hi!'), chat('How are you?', 'Fine.')) + '{"messages": [oops]}\n' +
    jsonl(chat('What is this?', 'A review.'), { messages: [{ role: 'user', content: 'x' }, { role: 'bot', content: 'y' }] }, chat('Bye', 'Bye!')),
  'pairs.csv': 'prompt,completion\n"Say ""hi""",hi\nonly a prompt\n"Two\nlines",ok\n',
  'alpaca.json': JSON.stringify([{ instruction: 'Name a color.', input: '', output: 'Blue.' }, { instruction: 'Add.', input: '2 and 2', output: '4' }], null, 1),
  'docs.txt': 'The quick brown fox jumps over the lazy dog.\n\nWhat is the sentiment of this review?\nFine.\n\nHello there.\n',
  'many-bad.jsonl': Array.from({ length: 12 }, (_, i) => `{"prompt": "p${i}"}`).join('\n') + '\n{"prompt": "a", "completion": "b"}\n',
  'long.jsonl': jsonl(
    { prompt: 'Hi', completion: ' there' },
    { prompt: 'Hello', completion: ' jumps over the lazy dog and then some more.' },
    { prompt: 'Below is an instruction that describes a task, and a long one at that.', completion: ' ok' },
  ),
  'alternating.jsonl': jsonl(chat('a', 'b'), { messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'assistant', content: 'c' }] }),
  'items.jsonl': jsonl(...Array.from({ length: 20 }, (_, i) => ({ prompt: `Question ${i}?`, completion: ` Answer ${i}.` }))),
  'sharegpt.jsonl': jsonl({ conversations: [{ from: 'system', value: 'Be brief.' }, { from: 'human', value: 'Hello' }, { from: 'gpt', value: 'Hi!' }] }),
  'unknown.jsonl': jsonl({ question: 'q', answer: 'a' }),
});
afterAll(() => {
  files.remove();
  removeTestTokenizers();
});

describe('loadDataset', () => {
  it('fails on bad records with file:line for each and the fix', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('chat.jsonl');
    const error = await loadDataset(file, tokenizer, { seqLen: 64 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LowrankError);
    expect((error as LowrankError).code).toBe('BAD_DATA');
    expect((error as LowrankError).message).toBe(
      `${file}: 2 bad records: ${file}:3: not valid JSON: unexpected "o", expected a value at column 15; ` +
        `${file}:5: "messages"[1].role must be one of system/user/assistant, got string "bot". ` +
        'Fix them, or pass --on-bad-line skip to train without them',
    );
  });

  it('skips bad records on request and reports them', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('chat.jsonl');
    const data = await loadDataset(file, tokenizer, { seqLen: 64, onBadLine: 'skip' });
    expect(data.format).toBe('chat');
    expect(data.problems.map((p) => p.where)).toEqual([`${file}:3`, `${file}:5`]);
    expect(data.train.map((e) => e.source)).toEqual([1, 2, 4, 6].map((line) => `${file}:${line}`));
    expect(data.stats).toMatchObject({ records: 4, skipped: 2, truncated: 0 });
    const tokens = data.train.reduce((n, e) => n + e.ids.length, 0);
    expect(data.stats.tokens).toBe(tokens);
    // Trained: each reply and its <|im_end|>.
    const replies = ['Hi!', 'Fine.', 'A review.', 'Bye!'].map((r) => tokenizer.encode(r + '<|im_end|>', { addSpecialTokens: false }).length);
    expect(data.stats.trainedTokens).toBe(replies.reduce((a, b) => a + b));
  });

  it('lists the first 10 of many bad records and the total', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('many-bad.jsonl');
    const error = (await loadDataset(file, tokenizer, { seqLen: 64 }).catch((e: unknown) => e)) as LowrankError;
    expect(error.message.startsWith(`${file}: 12 bad records, the first 10: ${file}:1: missing "completion"; ${file}:2: missing "completion";`)).toBe(true);
    expect(error.message).toContain(`${file}:10: missing "completion". Fix them`);
    expect(error.message).not.toContain(`${file}:11:`);
    expect(error.message).not.toContain('\n');
  });

  it('reads CSV prompt/completion with the line of a short row', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('pairs.csv');
    await expect(loadDataset(file, tokenizer, { seqLen: 64 })).rejects.toThrow(
      `${file}: 1 bad record: ${file}:3: missing column "completion": the row has 1 fields, the header has 2 (prompt, completion).`,
    );
    const data = await loadDataset(file, tokenizer, { seqLen: 64, onBadLine: 'skip' });
    expect(data.format).toBe('prompt-completion');
    expect(data.train.map((e) => e.source)).toEqual([`${file}:2`, `${file}:4`]);
    const first = data.train[0]!;
    expect([...first.ids]).toEqual([...tokenizer.encode('Say "hi"hi'), tokenizer.eosTokenId]);
  });

  it('reads a JSON array of Alpaca records through the chat template when the folder has one', async () => {
    const file = files.at('alpaca.json');
    const templated = await loadDataset(file, await testTokenizer('strict'), { seqLen: 128 });
    expect(templated.format).toBe('alpaca');
    expect(templated.train[0]!.source).toBe(`${file}:2 (record 1)`);
    const strict = await testTokenizer('strict');
    expect(strict.decode([...templated.train[1]!.ids])).toBe('<|im_start|>user\nAdd.\n\n2 and 2<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n');
    // No template in the folder: the Stanford Alpaca prompt.
    const plain = await testTokenizer('chatml');
    const untemplated = await loadDataset(file, plain, { seqLen: 128 });
    expect(plain.decode([...untemplated.train[0]!.ids])).toMatch(/^Below is an instruction that describes a task\. .*### Response:\nBlue\.<\|endoftext\|>$/s);
  });

  it('reads ShareGPT conversations as chat, training on the gpt turns', async () => {
    const tokenizer = await testTokenizer('chatml');
    const data = await loadDataset(files.at('sharegpt.jsonl'), tokenizer, { seqLen: 64 });
    expect(data.format).toBe('sharegpt');
    const [example] = data.train;
    expect(tokenizer.decode([...example!.ids])).toBe('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n');
    expect(tokenizer.decode([...example!.labels].filter((l) => l !== -100))).toBe('Hi!<|im_end|>');
  });

  it('packs .txt documents into seqLen windows, trained everywhere', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('docs.txt');
    const data = await loadDataset(file, tokenizer, { seqLen: 8 });
    expect(data.format).toBe('text');
    const eos = tokenizer.eosTokenId!;
    const docs = ['The quick brown fox jumps over the lazy dog.', 'What is the sentiment of this review?\nFine.', 'Hello there.'];
    const stream = docs.flatMap((d) => [...tokenizer.encode(d), eos]);
    expect(data.train.flatMap((e) => [...e.ids])).toEqual(stream.length % 8 === 1 ? stream.slice(0, -1) : stream);
    expect(data.stats.trainedTokens).toBe(data.stats.tokens);
    expect(data.train.slice(0, -1).every((e) => e.ids.length === 8)).toBe(true);
    await expect(loadDataset(file, tokenizer, { seqLen: 8, format: 'chat' })).rejects.toThrow(/a \.txt file holds plain text/);
  });

  it('counts truncated records and drops those left with nothing to train on', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('long.jsonl');
    const lengths = [
      ['Hi', ' there'],
      ['Hello', ' jumps over the lazy dog and then some more.'],
      ['Below is an instruction that describes a task, and a long one at that.', ' ok'],
    ].map(([p, c]) => ({ prompt: tokenizer.encode(p!).length, total: tokenizer.encode(p! + c!).length + 1 }));
    const seqLen = 10;
    // Preconditions on the fixture: record 1 fits, record 2 is cut inside its completion, record 3 inside its prompt.
    expect(lengths[0]!.total).toBeLessThanOrEqual(seqLen);
    expect(lengths[1]!.prompt).toBeLessThan(seqLen);
    expect(lengths[1]!.total).toBeGreaterThan(seqLen);
    expect(lengths[2]!.prompt).toBeGreaterThanOrEqual(seqLen);
    const data = await loadDataset(file, tokenizer, { seqLen });
    expect(data.stats).toMatchObject({ records: 3, truncated: 2, droppedAfterTruncation: 1 });
    expect(data.train.map((e) => e.ids.length)).toEqual([lengths[0]!.total, seqLen]);
    expect(data.stats.trainedTokens).toBe(lengths[0]!.total - lengths[0]!.prompt + seqLen - lengths[1]!.prompt);
  });

  it('reports a conversation the chat template rejects at its line', async () => {
    const file = files.at('alternating.jsonl');
    await expect(loadDataset(file, await testTokenizer('strict'), { seqLen: 64 })).rejects.toThrow(
      new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 1 bad record: .*alternating\\.jsonl:2: chat template .* rejected the conversation: Conversation roles must alternate`),
    );
  });

  it('splits by record, the same way for the same seed, with no record in both parts', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('items.jsonl');
    const a = await loadDataset(file, tokenizer, { seqLen: 32, validation: 0.25, seed: 5 });
    const b = await loadDataset(file, tokenizer, { seqLen: 32, validation: 0.25, seed: 5 });
    const c = await loadDataset(file, tokenizer, { seqLen: 32, validation: 0.25, seed: 6 });
    const sources = (d: typeof a) => [d.train.map((e) => e.source), d.validation.map((e) => e.source)];
    expect(sources(a)).toEqual(sources(b));
    expect(sources(a)).not.toEqual(sources(c));
    expect(a.validation).toHaveLength(5);
    expect(a.train).toHaveLength(15);
    expect(a.train.filter((e) => a.validation.some((v) => v.source === e.source))).toEqual([]);
    expect(a.stats.records).toBe(20);
  });

  it('gives clear errors for a missing file, an unknown extension and unknown keys', async () => {
    const tokenizer = await testTokenizer('chatml');
    await expect(loadDataset(files.at('none.jsonl'), tokenizer, { seqLen: 8 })).rejects.toMatchObject({ code: 'FILE_NOT_FOUND' });
    await expect(loadDataset(files.at('x.xlsx'), tokenizer, { seqLen: 8 })).rejects.toThrow(/extension "\.xlsx"/);
    await expect(loadDataset(files.at('unknown.jsonl'), tokenizer, { seqLen: 8 })).rejects.toThrow(/cannot tell the dataset format: the records have keys "question", "answer"/);
    const forced = await loadDataset(files.at('items.jsonl'), tokenizer, { seqLen: 32, format: 'text', onBadLine: 'skip' }).catch((e: Error) => e.message);
    expect(forced).toMatch(/no usable records \(20 bad records skipped\)/);
  });
});

describe('previewDataset', () => {
  it('shows the first examples with token counts and trained spans, and lists bad records', async () => {
    const tokenizer = await testTokenizer('chatml');
    const file = files.at('chat.jsonl');
    const preview = await previewDataset(file, tokenizer, { seqLen: 64, count: 2 });
    expect(preview.format).toBe('chat');
    expect(preview.records).toBe(4);
    expect(preview.problems.map((p) => p.where)).toEqual([`${file}:3`, `${file}:5`]);
    expect(preview.examples).toHaveLength(2);
    const first = preview.examples[0]!;
    expect(first.source).toBe(`${file}:1`);
    expect(first.spans).toEqual([
      { text: '<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n', trained: false },
      { text: 'Hi!<|im_end|>', trained: true },
      { text: '\n', trained: false },
    ]);
    expect(first.tokens).toBe(tokenizer.encode(first.spans.map((s) => s.text).join(''), { addSpecialTokens: false }).length);
    expect(first.trainedTokens).toBe(tokenizer.encode('Hi!<|im_end|>', { addSpecialTokens: false }).length);
    const text = formatPreview(preview);
    expect(text).toContain(`${file}: chat format, 4 usable records, 2 bad`);
    expect(text).toContain('«Hi!<|im_end|>»');
    expect(text).toContain(`── ${file}:2: ${preview.examples[1]!.tokens} tokens, ${preview.examples[1]!.trainedTokens} trained`);
  });

  it('previews packed text windows', async () => {
    const tokenizer = await testTokenizer('chatml');
    const preview = await previewDataset(files.at('docs.txt'), tokenizer, { seqLen: 8, count: 2 });
    expect(preview.examples.map((e) => e.tokens)).toEqual([8, 8]);
    expect(preview.examples.every((e) => e.spans.length === 1 && e.spans[0]!.trained)).toBe(true);
  });
});
