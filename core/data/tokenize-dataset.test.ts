/**
 * Labels: the trained tokens, decoded, must be exactly the assistant replies plus the end-of-turn
 * marker each template writes (expected strings written out from the templates by hand), and the
 * untrained ones the rest of the rendered conversation.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Tokenizer } from '../tokenize/tokenizer.ts';
import { RecordError } from './formats.ts';
import { chatSegments, IGNORE_INDEX, packDocuments, tokenizeRecord, toExample } from './tokenize-dataset.ts';
import { removeTestTokenizers, testTokenizer, type TestTokenizerKind } from './test-tokenizers.ts';

afterAll(removeTestTokenizers);

/** Decoded runs of consecutive tokens with the same trained flag. */
function runs(tokenizer: Tokenizer, ids: number[], labels: number[]): Array<{ text: string; trained: boolean }> {
  const out: Array<{ text: string; trained: boolean; ids: number[] }> = [];
  ids.forEach((id, t) => {
    const trained = labels[t] !== IGNORE_INDEX;
    if (trained) expect(labels[t]).toBe(id);
    const last = out[out.length - 1];
    if (last && last.trained === trained) last.ids.push(id);
    else out.push({ trained, ids: [id], text: '' });
  });
  return out.map((r) => ({ text: tokenizer.decode(r.ids), trained: r.trained }));
}

const conversation = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello there' },
  { role: 'assistant', content: ' Sure thing! ' },
  { role: 'user', content: 'And?' },
  { role: 'assistant', content: 'I am fine.' },
];

describe('chat labels', () => {
  const expected: Record<Exclude<TestTokenizerKind, 'strict'>, Array<{ text: string; trained: boolean }>> = {
    // DEFAULT_CHATML_TEMPLATE: <|im_start|>role\ncontent<|im_end|>\n; the newline between turns is not trained.
    chatml: [
      { text: '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n', trained: false },
      { text: ' Sure thing! <|im_end|>', trained: true },
      { text: '\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n', trained: false },
      { text: 'I am fine.<|im_end|>', trained: true },
      { text: '\n', trained: false },
    ],
    // LLAMA3_TEMPLATE trims contents and ends each turn with <|eot_id|>, with nothing in between.
    llama3: [
      {
        text:
          '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
          '<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
        trained: false,
      },
      { text: 'Sure thing!<|eot_id|>', trained: true },
      { text: '<|start_header_id|>user<|end_header_id|>\n\nAnd?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n', trained: false },
      { text: 'I am fine.<|eot_id|>', trained: true },
    ],
    // DEFAULT_PLAIN_TEMPLATE: "role: content\n", generation prompt "assistant:"; no end marker,
    // so the reply's newline is trained.
    plain: [
      { text: 'system: Be brief.\nuser: Hello there\nassistant:', trained: false },
      { text: '  Sure thing! \n', trained: true },
      { text: 'user: And?\nassistant:', trained: false },
      { text: ' I am fine.\n', trained: true },
    ],
  };
  for (const [kind, want] of Object.entries(expected)) {
    it(`${kind} template: trained tokens are exactly the assistant replies and their end marker`, async () => {
      const tokenizer = await testTokenizer(kind as TestTokenizerKind);
      const { ids, labels } = tokenizeRecord({ kind: 'chat', messages: conversation }, tokenizer);
      expect(runs(tokenizer, ids, labels)).toEqual(want);
      // The ids are the template's rendering tokenized in one piece: nothing was re-tokenized in parts.
      expect(ids).toEqual(tokenizer.encode(tokenizer.applyChatTemplate(conversation), { addSpecialTokens: false }));
    });
  }

  it('marks the end-of-turn marker as a single trained token (ChatML)', async () => {
    const tokenizer = await testTokenizer('chatml');
    const imEnd = tokenizer.tokenToId('<|im_end|>')!;
    const { ids, labels } = tokenizeRecord({ kind: 'chat', messages: conversation }, tokenizer);
    const ends = ids.flatMap((id, t) => (id === imEnd ? [labels[t] === imEnd] : []));
    // system, user, assistant, user, assistant turns: only the assistant ones are trained.
    expect(ends).toEqual([false, false, true, false, true]);
  });

  it('finds the end marker even when a reply looks like one', async () => {
    const tokenizer = await testTokenizer('chatml');
    const messages = [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'x im_end|>' }];
    const { ids, labels } = tokenizeRecord({ kind: 'chat', messages }, tokenizer);
    expect(runs(tokenizer, ids, labels).filter((r) => r.trained).map((r) => r.text)).toEqual(['x im_end|><|im_end|>']);
  });

  it('trainOnPrompt trains on every token', async () => {
    const tokenizer = await testTokenizer('chatml');
    const { ids, labels } = tokenizeRecord({ kind: 'chat', messages: conversation }, tokenizer, true);
    expect(labels).toEqual(ids);
  });

  it("turns a template's raise_exception into a record error", async () => {
    const tokenizer = await testTokenizer('strict');
    const messages = [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'assistant', content: 'c' }];
    expect(() => chatSegments(messages, tokenizer)).toThrow(RecordError);
    expect(() => chatSegments(messages, tokenizer)).toThrow(/Conversation roles must alternate/);
  });
});

describe('prompt/completion and text', () => {
  it('trains on the completion and the EOS appended after it', async () => {
    const tokenizer = await testTokenizer('chatml');
    const out = tokenizeRecord({ kind: 'segments', segments: [{ text: 'Translate to French: cheese.', train: false }, { text: ' fromage.', train: true }] }, tokenizer);
    expect(runs(tokenizer, out.ids, out.labels)).toEqual([
      { text: 'Translate to French: cheese.', trained: false },
      { text: ' fromage.<|endoftext|>', trained: true },
    ]);
    expect(out.ids).toEqual([...tokenizer.encode('Translate to French: cheese. fromage.'), tokenizer.eosTokenId]);
  });

  it('gives a token that straddles the prompt/completion cut to the completion', async () => {
    const tokenizer = await testTokenizer('chatml');
    expect(tokenizer.encode(' the')).toHaveLength(1); // precondition: " the" is one token
    const out = tokenizeRecord({ kind: 'segments', segments: [{ text: 'over th', train: false }, { text: 'e dog', train: true }] }, tokenizer);
    expect(runs(tokenizer, out.ids, out.labels)).toEqual([
      { text: 'over', trained: false },
      { text: ' the dog<|endoftext|>', trained: true },
    ]);
  });

  it('truncates to seqLen and says so', async () => {
    const tokenizer = await testTokenizer('chatml');
    const tokens = tokenizeRecord({ kind: 'text', text: 'The quick brown fox jumps over the lazy dog.' }, tokenizer);
    const { example, truncated } = toExample(tokens, 5, 'f:1');
    expect(truncated).toBe(true);
    expect([...example.ids]).toEqual(tokens.ids.slice(0, 5));
    expect([...example.labels]).toEqual(tokens.ids.slice(0, 5));
    expect(toExample(tokens, tokens.ids.length, 'f:1').truncated).toBe(false);
  });
});

describe('packDocuments', () => {
  it('concatenates documents with EOS and cuts seqLen windows, keeping a last short one', async () => {
    const tokenizer = await testTokenizer('chatml');
    const docs = [
      { text: 'The quick brown fox.', source: 'f:1' },
      { text: 'Jumps over the lazy dog, and then some more words here.', source: 'f:3' },
      { text: 'Hi', source: 'f:5' },
    ];
    const eos = tokenizer.eosTokenId!;
    const stream = docs.flatMap((d) => [...tokenizer.encode(d.text), eos]);
    const seqLen = 8;
    const windows = packDocuments(docs, tokenizer, seqLen);
    const expected: number[][] = [];
    for (let at = 0; at < stream.length; at += seqLen) expected.push(stream.slice(at, at + seqLen));
    if (expected[expected.length - 1]!.length < 2) expected.pop();
    expect(windows.map((w) => [...w.ids])).toEqual(expected);
    expect(windows.every((w) => [...w.labels].join() === [...w.ids].join())).toBe(true);
    // A window's source is the document its first token comes from.
    const docOfToken = docs.flatMap((d) => new Array<string>(tokenizer.encode(d.text).length + 1).fill(d.source));
    expect(windows.map((w) => w.source)).toEqual(expected.map((_, k) => docOfToken[k * seqLen]));
    expect(new Set(windows.map((w) => w.source)).size).toBeGreaterThan(1);
    expect(packDocuments(docs, tokenizer, seqLen, 2)).toHaveLength(2);
  });
});
