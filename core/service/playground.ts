/**
 * The playground's job: one assistant turn of a chat with a run's model. The conversation (system
 * prompt + turns) goes through the model's chat template, as the run's chat data did in training,
 * and the answer streams out token by token; the base model alone can answer the same conversation
 * after it (the adapter detached). Between tokens the job yields to the event loop, so a stop
 * request (playground.stop → the job's `shouldStop`) ends it within one token.
 */
import type { Request, PlaygroundReply } from '../contract.ts';
import type { RunStore } from '../store/store.ts';
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import { loadTrainedRun } from '../train/finetune.ts';
import { stopTokenIds } from '../train/evaluate.ts';
import { Generation } from '../models/generate.ts';

/** At most this often a growing answer goes out as an event (the last text always does). */
const STREAM_INTERVAL_MS = 50;

export interface PlaygroundIo {
  /** The answer so far, whole. */
  stream(source: 'adapted' | 'base', text: string): void;
  shouldStop(): boolean;
}

// The job also runs in the desktop app's engine window (a browser page), which has no setImmediate.
/**
 * Text shown before an answer is complete: a byte-level token can end inside a UTF-8 character,
 * which decodes to U+FFFD until its next bytes arrive, so a trailing one is held back.
 */
const complete = (text: string) => text.replace(/\uFFFD+$/, '');

const nextTick = () => new Promise<void>((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));

export async function playgroundAnswer(store: RunStore, request: Request<'playground.generate'>, io: PlaygroundIo): Promise<PlaygroundReply> {
  const started = performance.now();
  const prepared = await loadTrainedRun(store, request.runId);
  const { model, tokenizer } = prepared;
  try {
    const messages: ChatMessage[] = [...(request.system.trim() ? [{ role: 'system', content: request.system }] : []), ...request.messages];
    const promptIds = tokenizer.encode(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
    const stops = stopTokenIds(tokenizer);
    const decode = (ids: number[]) => tokenizer.decode(ids.filter((id) => !stops.includes(id)), { skipSpecialTokens: true });
    const options = { maxNewTokens: request.maxNewTokens, temperature: request.temperature, topP: request.topP, topK: request.topK, seed: request.seed, stopTokenIds: stops };

    let stopped = false;
    const answer = async (source: 'adapted' | 'base'): Promise<string> => {
      const generation = new Generation(model, promptIds, options);
      let text = '';
      let sentAt = 0;
      try {
        while (generation.step() !== null) {
          text = decode(generation.generated);
          if (performance.now() - sentAt >= STREAM_INTERVAL_MS) {
            io.stream(source, complete(text));
            sentAt = performance.now();
          }
          await nextTick();
          if (io.shouldStop()) {
            stopped = true;
            text = complete(text);
            break;
          }
        }
      } finally {
        generation.dispose();
      }
      io.stream(source, text);
      return text;
    };

    const adapted = await answer('adapted');
    let base: string | null = null;
    if (request.compareBase && !stopped) {
      prepared.attached.detach();
      base = await answer('base');
    }
    return { adapted, base, stopped, promptTokens: promptIds.length, seconds: (performance.now() - started) / 1000 };
  } finally {
    model.dispose();
  }
}
