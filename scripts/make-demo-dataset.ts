/**
 * Builds resources/datasets/review-sentiment.jsonl, the bundled instruction dataset of the demo:
 * short reviews whose sentiment is carried by one or two adjectives, as chat records
 * (user: the review and the question, assistant: "positive" or "negative"). The base model was
 * only pre-trained on prose, so it does not answer with a label; a short LoRA run teaches it to,
 * and exact-match accuracy on a held-out split measures how far. Deterministic (seeded).
 *
 *   npx tsx scripts/make-demo-dataset.ts
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Random } from '../core/random.ts';

const POSITIVE = [
  'wonderful', 'excellent', 'delightful', 'pleasant', 'superb', 'lovely', 'charming', 'brilliant', 'splendid',
  'marvelous', 'great', 'good', 'beautiful', 'friendly', 'generous', 'cheerful', 'graceful', 'elegant', 'fine', 'warm',
];
const NEGATIVE = [
  'terrible', 'awful', 'dreadful', 'horrible', 'poor', 'dull', 'miserable', 'unpleasant', 'bitter', 'cruel',
  'nasty', 'shabby', 'boring', 'ugly', 'rude', 'gloomy', 'weak', 'wretched', 'foolish', 'bad',
];
const SUBJECTS = [
  'the dinner', 'the play', 'the hotel', 'the service', 'the music', 'the book', 'the film', 'the garden',
  'the lecture', 'the trip', 'the room', 'the coffee', 'the concert', 'the game', 'the speech', 'the meal',
  'the show', 'the weather', 'the party', 'the story',
];
const TEMPLATES = [
  (s: string, a: string) => `${cap(s)} was ${a}.`,
  (s: string, a: string) => `I thought ${s} was ${a}.`,
  (s: string, a: string) => `Everyone said ${s} was ${a}.`,
  (s: string, a: string) => `${cap(s)} turned out to be ${a}.`,
  (s: string, a: string) => `We found ${s} ${a}.`,
  (s: string, a: string, b?: string) => `${cap(s)} was ${a} and ${b}.`,
];
const QUESTIONS = ['Is this review positive or negative?', 'What is the sentiment of this review?'];

function cap(s: string): string {
  return s[0].toUpperCase() + s.slice(1);
}

export function makeReviewRecords(count: number, seed: number): Array<{ messages: Array<{ role: string; content: string }> }> {
  const rng = new Random(seed);
  const seen = new Set<string>();
  const records = [];
  while (records.length < count) {
    const positive = rng.next() < 0.5;
    const words = positive ? POSITIVE : NEGATIVE;
    const template = TEMPLATES[rng.int(TEMPLATES.length)];
    const review = template(SUBJECTS[rng.int(SUBJECTS.length)], words[rng.int(words.length)], words[rng.int(words.length)]);
    if (seen.has(review)) continue;
    seen.add(review);
    const question = QUESTIONS[rng.int(QUESTIONS.length)];
    records.push({
      messages: [
        { role: 'user', content: `${question}\n${review}` },
        { role: 'assistant', content: positive ? 'positive' : 'negative' },
      ],
    });
  }
  return records;
}

const isMain = process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename);
if (isMain) {
  const out = path.resolve(import.meta.dirname, '..', 'resources', 'datasets', 'review-sentiment.jsonl');
  const records = makeReviewRecords(800, 2026);
  fs.writeFileSync(out, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  console.log(`wrote ${records.length} records to ${out}`);
}
