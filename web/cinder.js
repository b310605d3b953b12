// cinder in the browser: the JavaScript face of the `cinder-wasm` crate.
//
//   const engine = await Engine.load('/model.gguf', { onProgress: (p) => ... });
//   const result = await engine.generate('Hello', { max_tokens: 32 }, (text) => ...);
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) ...
//   const { data } = await engine.embeddings.create({ input: ['a text', 'another'] });
//
// The engine runs in a Web Worker (worker.js) by default, so the page's main thread only
// renders; `{ worker: false }` runs it on the page's thread instead. Either way every call
// in flight shares the engine's batches, and the API is the same.

import { CinderError, engineHost } from './core.js';

export { CinderError };

/** Completions logprobs of one more token appended to those so far (null: none yet). */
function joinLogprobs(sofar, next) {
  if (!sofar) return next;
  for (const key of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset']) sofar[key].push(...next[key]);
  return sofar;
}

/** A queue that an async iterator drains: the shape of a streamed chat completion. */
class ChunkQueue {
  #items = [];
  #waiting = null;
  #done = false;
  #error = null;

  push(item) {
    this.#items.push(item);
    this.#wake();
  }
  end(error = null) {
    this.#done = true;
    this.#error = error;
    this.#wake();
  }
  #wake() {
    this.#waiting?.();
    this.#waiting = null;
  }
  async *[Symbol.asyncIterator]() {
    for (;;) {
      if (this.#items.length) {
        yield this.#items.shift();
      } else if (this.#done) {
        if (this.#error) throw this.#error;
        return;
      } else {
        await new Promise((resolve) => (this.#waiting = resolve));
      }
    }
  }
}

export class Engine {
  /** Sends a message to the engine (engineHost's protocol in core.js). */
  #send;
  #worker = null;
  /** Set once a trap stopped the engine: every later call fails with it. */
  #broken = null;
  /** Requests in flight: id -> { onEvent, fail, accepted }. */
  #requests = new Map();
  #nextId = 1;
  /** Profiles asked for: reply id -> { resolve, reject }. */
  #profiles = new Map();

  /**
   * Loads the GGUF model at `url` onto WebGPU. `onProgress({ phase, loaded, total, cached })`
   * reports the download, then the `upload` of the weights and the `compile` of the
   * kernels (a short request run through them); `options` sets the KV pool and batch limits (see the crate's
   * EngineOptions); `wasmUrl` overrides where the .wasm file is; `worker: false` runs the
   * engine on the page's thread instead of a Web Worker. `device` is `auto` (the default:
   * WebGPU on a hardware adapter, the CPU where WebGPU or an adapter is missing, and on a
   * software adapter whichever of the two timed faster at load), `gpu` or `cpu`;
   * `engine.info.device` says which runs. The model is kept in the Cache API for the next
   * visit; `cache: false` fetches it every time (the first load then peaks about the file's
   * size lower in memory). `loras: { NAME: url | { url, scale } | { bytes, scale } }` loads
   * LoRA adapters of the model (GGUF, as llama.cpp writes them): a request runs with one by
   * naming it as its `model`, and requests of every adapter and of none share the batches
   * (`options.max_loras`, 4 by default, caps how many).
   */
  static async load(url, { onProgress, options, wasmUrl, worker = true, device = 'auto', cache = true, loras = {} } = {}) {
    // The engine's thread checks `device` (core.js's chooseDevice) and fails the load with
    // the reason.
    const engine = new Engine();
    const loaded = new Promise((resolve, reject) => (engine.#loading = { resolve, reject, onProgress }));
    if (worker) {
      try {
        engine.#worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'cinder' });
      } catch (e) {
        throw new CinderError(`cannot start the engine's worker: ${e.message}`);
      }
      engine.#worker.onmessage = ({ data }) => engine.#receive(data);
      engine.#worker.onerror = (e) => engine.#stopped(new CinderError(`the engine's worker failed: ${e.message ?? 'an error'}`));
      engine.#send = (data) => engine.#worker.postMessage(data);
    } else {
      engine.#send = engineHost((data) => engine.#receive(data));
    }
    // A worker resolves URLs against its own script: send absolute ones.
    const absolute = (u) => u && new URL(u, globalThis.location?.href).href;
    const adapters = Object.fromEntries(
      Object.entries(loras ?? {}).map(([name, spec]) => {
        const { url: at, bytes, scale = 1 } = typeof spec === 'string' ? { url: spec } : spec;
        return [name, { url: absolute(at), bytes, scale }];
      }),
    );
    engine.#send({ op: 'load', url: absolute(url), options: options ?? {}, wasmUrl: absolute(wasmUrl), device, cache: cache !== false, loras: adapters });
    await loaded;
    return engine;
  }

  #loading = null;

  constructor() {
    this.chat = { completions: { create: (body) => this.#createChat(body) } };
    /**
     * OpenAI's embeddings: `create({ input, encoding_format, dimensions })` resolves to the
     * `/v1/embeddings` answer, `{ object: 'list', data: [{ embedding, index }], usage }`;
     * each input runs its prompt through the engine's batches beside the generations.
     */
    this.embeddings = { create: (body) => this.#createEmbeddings(body) };
  }

  /** A message from the engine. */
  #receive(data) {
    switch (data.op) {
      case 'progress':
        return this.#loading?.onProgress?.(data.progress);
      case 'loaded':
        /** Adapter, context length, vocabulary, weight bytes, KV pool. */
        this.info = data.info;
        /** `{ cached, stale, bytes, fetch_s, upload_s, compile_s, load_s, wasm_memory_bytes }` of the load. */
        this.loadStats = data.loadStats;
        this.#loading.resolve();
        this.#loading = null;
        return;
      case 'loadFailed':
        this.#worker?.terminate();
        this.#loading.reject(new CinderError(data.error));
        this.#loading = null;
        return;
      case 'accepted':
        return this.#requests.get(data.id)?.accepted();
      case 'refused': {
        const request = this.#requests.get(data.id);
        this.#requests.delete(data.id);
        return request?.fail(new CinderError(data.error));
      }
      case 'event': {
        const request = this.#requests.get(data.id);
        if (!request) return;
        const event = data.event;
        // The engine ends a request whose steps kept failing, with the device's error.
        if (event.error) {
          this.#requests.delete(data.id);
          this.abort(data.id);
          return request.fail(new CinderError(event.error));
        }
        if (event.done) this.#requests.delete(data.id);
        return request.onEvent(event);
      }
      case 'broken':
        return this.#stopped(new CinderError(data.error));
      case 'profile': {
        const waiting = this.#profiles.get(data.reply);
        this.#profiles.delete(data.reply);
        return data.error ? waiting?.reject(new CinderError(data.error)) : waiting?.resolve(data.profile);
      }
    }
  }

  /**
   * Generates from a prompt (a string, or a list of chat messages) with OpenAI options
   * (`max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `stop`, `ignore_eos`,
   * `n`, `logprobs`, ...). `onToken(text, { id, index, token })` gets the text as it is
   * released. The promise resolves to `{ id, text, tokens, finish_reason, logprobs,
   * speculative, prompt_tokens, completion_tokens, seconds, first_token_s, tokens_per_s,
   * choices }`: the first choice's text, tokens, finish reason, logprobs (OpenAI's
   * completions object, with `logprobs: k`) and speculative decoding (`{ draft_tokens,
   * accepted_tokens, acceptance_rate }` with `speculative: { method: 'ngram' }`, else
   * null), every choice's in `choices`, tokens counted over all of them. It also carries
   * the request's `id` for `abort`.
   */
  generate(promptOrMessages, options = {}, onToken = undefined) {
    const chat = Array.isArray(promptOrMessages) && typeof promptOrMessages[0] === 'object';
    const body = chat ? { ...options, messages: promptOrMessages } : { ...options, prompt: promptOrMessages };
    // A chat body asks for logprobs with `top_logprobs`; the events carry them in the
    // completions' shape either way.
    if (chat && typeof body.logprobs === 'number') {
      body.top_logprobs = body.logprobs;
      body.logprobs = true;
    }
    const started = performance.now();
    let firstToken = null;
    const choices = [];
    let promptTokens = 0;
    let id;
    const promise = new Promise((resolve, reject) => {
      id = this.#submit(body, chat ? 'chat' : 'completions', reject, (event) => {
        const choice = (choices[event.index] ??= { index: event.index, text: '', tokens: [], logprobs: null });
        if (event.type === 'token') {
          firstToken ??= performance.now();
          choice.tokens.push(event.token);
          if (event.logprobs) choice.logprobs = joinLogprobs(choice.logprobs, event.logprobs);
        }
        choice.text += event.text;
        if (event.text) onToken?.(event.text, { id: event.id, index: event.index, token: event.token });
        if (event.type === 'finished') {
          choice.finish_reason = event.finish_reason;
          choice.completion_tokens = event.completion_tokens;
          choice.speculative = event.speculative ?? null;
          promptTokens = event.prompt_tokens;
        }
        if (!event.done) return;
        const now = performance.now();
        const tokens = choices.reduce((sum, c) => sum + c.tokens.length, 0);
        // The first step gives each choice its first token; speed counts the steps after it.
        const decodeSeconds = firstToken === null ? 0 : (now - firstToken) / 1000;
        const first = choices[0];
        resolve({
          id: event.id,
          text: first.text,
          tokens: first.tokens,
          finish_reason: first.finish_reason,
          logprobs: first.logprobs,
          speculative: first.speculative,
          prompt_tokens: promptTokens,
          completion_tokens: choices.reduce((sum, c) => sum + c.completion_tokens, 0),
          seconds: (now - started) / 1000,
          first_token_s: firstToken === null ? null : (firstToken - started) / 1000,
          tokens_per_s: tokens > choices.length && decodeSeconds > 0 ? (tokens - choices.length) / decodeSeconds : 0,
          choices,
        });
      }).id;
    });
    promise.id = id;
    return promise;
  }

  /** Ends request `id`; its promise resolves with `finish_reason` "abort". */
  abort(id) {
    if (!this.#broken) this.#send({ op: 'abort', id });
  }

  /** Starts timing the engine's steps (the page's `?profile=1`). */
  profileStart() {
    if (this.#broken) throw this.#broken;
    this.#send({ op: 'profileStart' });
  }

  /**
   * Resolves to the profile since `profileStart`: `{ steps, host: { launch_ms, wait_ms,
   * land_ms }, device_timestamps, device_ms, kernels: [{ kernel, dispatches, ms }] }`, each a
   * total over the steps; `host` is the engine thread's clock around planning and
   * launching, awaiting the device, and sampling; `kernels` the device time of each kernel
   * (timestamp queries where the adapter has them).
   */
  profileFinish() {
    if (this.#broken) return Promise.reject(this.#broken);
    const reply = this.#nextId++;
    const done = new Promise((resolve, reject) => this.#profiles.set(reply, { resolve, reject }));
    this.#send({ op: 'profileFinish', reply });
    return done;
  }

  // The engine builds the OpenAI objects (the server's typed module): each chat event
  // carries its `chunk`, and the last one `usage_chunk` and the whole `completion`.
  #createChat(body) {
    const { stream, stream_options: streamOptions, ...rest } = body;
    if (!stream) {
      return new Promise((resolve, reject) => {
        this.#submit(rest, 'chat', reject, (event) => {
          if (event.done) resolve(event.completion);
        });
      });
    }
    const queue = new ChunkQueue();
    const iterable = queue[Symbol.asyncIterator]();
    let accepted;
    try {
      ({ id: iterable.id, accepted } = this.#submit(rest, 'chat', (e) => queue.end(e), (event) => {
        if (event.chunk) queue.push(event.chunk);
        if (!event.done) return;
        if (streamOptions?.include_usage) queue.push(event.usage_chunk);
        queue.end();
      }));
    } catch (e) {
      return Promise.reject(e);
    }
    iterable.abort = () => this.abort(iterable.id);
    // A refused body rejects here, as the server answers it with an error status.
    return accepted.then(() => iterable);
  }

  #createEmbeddings(body) {
    return new Promise((resolve, reject) => {
      this.#submit(body, 'embeddings', reject, (event) => {
        if (event.done) resolve(event.embeddings);
      });
    });
  }

  /**
   * Queues a request for `endpoint` ('completions', 'chat', 'embeddings'); returns its id
   * and a promise that resolves once the engine accepted it or rejects with why it was
   * refused (`fail` hears the same, and any later failure).
   */
  #submit(body, endpoint, fail, onEvent) {
    if (this.#broken) throw this.#broken;
    const id = this.#nextId++;
    const accepted = new Promise((resolve, reject) => {
      this.#requests.set(id, {
        onEvent,
        accepted: () => resolve(),
        fail: (e) => {
          reject(e);
          fail(e);
        },
      });
    });
    // `fail` reports it; an unawaited `accepted` must not count as unhandled.
    accepted.catch(() => {});
    this.#send({ op: 'submit', id, body, endpoint });
    return { id, accepted };
  }

  /** The engine stopped for good: fail everything in flight now and every call from now on. */
  #stopped(error) {
    this.#broken ??= error;
    this.#loading?.reject(error);
    this.#loading = null;
    for (const [id, request] of this.#requests) {
      this.#requests.delete(id);
      request.fail(this.#broken);
    }
    for (const [reply, waiting] of this.#profiles) {
      this.#profiles.delete(reply);
      waiting.reject(this.#broken);
    }
  }
}
