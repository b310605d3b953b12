// cinder in the browser: the JavaScript face of the `cinder-wasm` crate.
//
//   const engine = await Engine.load('/model.gguf', { onProgress: (p) => ... });
//   const result = await engine.generate('Hello', { max_tokens: 32 }, (text) => ...);
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) ...
//
// Every call in flight shares the engine's batches: the step loop below runs one engine
// step (all waiting and running requests together) and yields to the browser in between,
// so the page stays responsive.

import init, { WasmEngine, lastPanic } from './pkg/cinder_wasm.js';

/** Every failure this module reports: no WebGPU, the model fetch, a bad request, the device. */
export class CinderError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CinderError';
  }
}

const MODEL_CACHE = 'cinder-models-v1';

const message = (e) => (e && e.message) || String(e);

/**
 * A WebAssembly trap (a Rust panic, or memory exhausted) stops the engine for good; the
 * error says why when Rust could tell.
 */
function isTrap(e) {
  return e instanceof WebAssembly.RuntimeError;
}

function trapError(e) {
  let panic = null;
  try {
    panic = lastPanic();
  } catch {
    // The instance cannot even answer: memory is exhausted.
  }
  const why = panic ?? `${message(e)} (out of memory?)`;
  return new CinderError(`the engine stopped after an internal error: ${why}; reload the page`);
}

/** Lets the browser render and handle input before the next engine step. */
function yieldToBrowser() {
  if (globalThis.scheduler?.yield) return globalThis.scheduler.yield();
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

/**
 * The model file's bytes: from the Cache API when an earlier visit stored them, otherwise
 * fetched with progress and stored for the next visit.
 */
async function fetchModel(url, onProgress) {
  let cache = null;
  try {
    cache = await caches.open(MODEL_CACHE);
  } catch {
    // No Cache API (an insecure origin): fetch every time.
  }
  let response = cache ? await cache.match(url) : undefined;
  const cached = Boolean(response);
  if (!response) {
    try {
      response = await fetch(url);
    } catch (e) {
      throw new CinderError(`model fetch failed: ${url}: ${message(e)}`);
    }
    if (!response.ok) throw new CinderError(`model fetch failed: ${url}: HTTP ${response.status}`);
  }
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw new CinderError(`model fetch failed: ${url}: ${message(e)}`);
    }
    if (chunk.done) break;
    parts.push(chunk.value);
    loaded += chunk.value.length;
    onProgress?.({ phase: 'download', loaded, total, cached });
  }
  if (total && loaded !== total) throw new CinderError(`model fetch failed: ${url}: got ${loaded} of ${total} bytes`);
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  if (cache && !cached) {
    try {
      await cache.put(url, new Response(bytes, { headers: { 'content-length': String(loaded) } }));
    } catch (e) {
      console.warn(`cinder: the model was not cached (${message(e)}); the next visit downloads it again`);
    }
  }
  return { bytes, cached };
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
  #core;
  #looping = false;
  /** Set once a trap stopped the engine: every later call fails with it. */
  #broken = null;
  /** Requests in flight: id -> { onEvent, fail }. */
  #requests = new Map();

  /**
   * Loads the GGUF model at `url` onto WebGPU. `onProgress({ phase, loaded, total, cached })`
   * reports the download; `options` sets the KV pool and batch limits (see the crate's
   * EngineOptions); `wasmUrl` overrides where the .wasm file is.
   */
  static async load(url, { onProgress, options, wasmUrl } = {}) {
    if (!globalThis.navigator?.gpu) {
      throw new CinderError('WebGPU is not available in this browser (navigator.gpu is missing)');
    }
    const started = performance.now();
    try {
      await init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
    } catch (e) {
      throw new CinderError(`cannot load cinder's WebAssembly: ${message(e)}`);
    }
    const { bytes, cached } = await fetchModel(url, onProgress);
    const downloaded = performance.now();
    onProgress?.({ phase: 'upload', loaded: bytes.length, total: bytes.length, cached });
    let core;
    try {
      core = await WasmEngine.load(bytes, JSON.stringify(options ?? {}));
    } catch (e) {
      throw isTrap(e) ? trapError(e) : new CinderError(message(e));
    }
    const done = performance.now();
    return new Engine(core, {
      cached,
      bytes: bytes.length,
      fetch_s: (downloaded - started) / 1000,
      load_s: (done - started) / 1000,
    });
  }

  constructor(core, loadStats) {
    this.#core = core;
    /** Adapter, context length, vocabulary, weight bytes, KV pool. */
    this.info = JSON.parse(core.info());
    /** `{ cached, bytes, fetch_s, load_s }` of the load. */
    this.loadStats = loadStats;
    this.chat = { completions: { create: (body) => this.#createChat(body) } };
  }

  /**
   * Generates from a prompt (a string, or a list of chat messages) with OpenAI options
   * (`max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `stop`, `ignore_eos`,
   * ...). `onToken(text, { id, token })` gets the text as it is released. The promise
   * resolves to `{ id, text, tokens, finish_reason, prompt_tokens, completion_tokens,
   * seconds, first_token_s, tokens_per_s }`; it also carries the request's `id` for
   * `abort`.
   */
  generate(promptOrMessages, options = {}, onToken = undefined) {
    const chat = Array.isArray(promptOrMessages) && typeof promptOrMessages[0] === 'object';
    const body = chat ? { ...options, messages: promptOrMessages } : { ...options, prompt: promptOrMessages };
    const started = performance.now();
    let firstToken = null;
    const tokens = [];
    let text = '';
    let id;
    const promise = new Promise((resolve, reject) => {
      id = this.#submit(body, chat, reject, (event) => {
        if (event.type === 'token') {
          firstToken ??= performance.now();
          tokens.push(event.token);
        }
        text += event.text;
        if (event.text) onToken?.(event.text, { id: event.id, token: event.token });
        if (event.type !== 'finished') return;
        const seconds = (performance.now() - started) / 1000;
        const decodeSeconds = firstToken === null ? 0 : (performance.now() - firstToken) / 1000;
        resolve({
          id: event.id,
          text,
          tokens,
          finish_reason: event.finish_reason,
          prompt_tokens: event.prompt_tokens,
          completion_tokens: event.completion_tokens,
          seconds,
          first_token_s: firstToken === null ? null : (firstToken - started) / 1000,
          tokens_per_s: tokens.length > 1 && decodeSeconds > 0 ? (tokens.length - 1) / decodeSeconds : 0,
        });
      });
    });
    promise.id = id;
    return promise;
  }

  /** Ends request `id`; its promise resolves with `finish_reason` "abort". */
  abort(id) {
    if (this.#broken) return;
    try {
      this.#core.abort(id);
    } catch (e) {
      this.#fatal(e);
    }
  }

  // The engine builds the OpenAI objects (the server's typed module): each chat event
  // carries its `chunk`, and the last one `usage_chunk` and the whole `completion`.
  #createChat(body) {
    const { stream, stream_options: streamOptions, ...rest } = body;
    if (!stream) {
      return new Promise((resolve, reject) => {
        this.#submit(rest, true, reject, (event) => {
          if (event.type === 'finished') resolve(event.completion);
        });
      });
    }
    const queue = new ChunkQueue();
    let id;
    try {
      id = this.#submit(rest, true, (e) => queue.end(e), (event) => {
        if (event.chunk) queue.push(event.chunk);
        if (event.type !== 'finished') return;
        if (streamOptions?.include_usage) queue.push(event.usage_chunk);
        queue.end();
      });
    } catch (e) {
      return Promise.reject(e);
    }
    const iterable = queue[Symbol.asyncIterator]();
    iterable.id = id;
    iterable.abort = () => this.abort(id);
    return Promise.resolve(iterable);
  }

  /** Queues a request and makes sure the step loop runs; returns its id. */
  #submit(body, chat, fail, onEvent) {
    if (this.#broken) throw this.#broken;
    let id;
    try {
      id = this.#core.submit(JSON.stringify(body), chat, (json) => {
        const event = JSON.parse(json);
        if (event.type === 'finished') {
          this.#requests.delete(event.id);
          // The engine ends a request whose steps kept failing, with the device's error.
          if (event.error) return fail(new CinderError(event.error));
        }
        onEvent(event);
      });
    } catch (e) {
      if (isTrap(e)) throw this.#fatal(e);
      throw new CinderError(message(e));
    }
    this.#requests.set(id, { fail });
    this.#run();
    return id;
  }

  /** The step loop: one engine step at a time while there is work, yielding in between. */
  async #run() {
    if (this.#looping) return;
    this.#looping = true;
    try {
      for (;;) {
        try {
          if (this.#broken || !this.#core.hasWork()) break;
          const ran = await this.#core.step();
          // Nothing fit this step (waiting on memory): give the page a moment.
          if (!ran) await new Promise((resolve) => setTimeout(resolve, 5));
        } catch (e) {
          if (isTrap(e)) {
            this.#fatal(e);
            break;
          }
          // A failed step is retried; the engine ends requests that fail three in a row.
          console.warn(`cinder: engine step failed: ${message(e)}`);
        }
        await yieldToBrowser();
      }
    } finally {
      this.#looping = false;
    }
  }

  /** Fails every request in flight; the engine ends them at its next step. */
  #failAll(error) {
    for (const [id, request] of this.#requests) {
      this.#requests.delete(id);
      request.fail(error);
      if (!this.#broken) this.abort(id);
    }
  }

  /** A trap stopped the engine: fail everything now and from now on. */
  #fatal(e) {
    this.#broken ??= trapError(e);
    this.#failAll(this.#broken);
    return this.#broken;
  }
}
