// The engine itself, on whichever thread runs it: the page's (`Engine.load(url, { worker:
// false })`) or a dedicated worker's (worker.js, the default). cinder.js builds the public
// API on top of either.
//
// The step loop runs one engine step (all waiting and running requests together) and yields
// to the event loop in between, so new requests and aborts join the next step.

import init, { ModelBytes, WasmEngine, lastPanic } from './pkg/cinder_wasm.js';

/** Every failure this module reports: no WebGPU, the model fetch, a bad request, the device. */
export class CinderError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CinderError';
  }
}

const MODEL_CACHE = 'cinder-models-v1';

export const message = (e) => (e && e.message) || String(e);

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

/**
 * Lets the event loop run (input, messages, rendering) before the next engine step: a
 * message to itself queues behind what is already waiting. (`scheduler.yield()` would
 * resume ahead of it: on the CPU path, where a step awaits nothing, the page's messages,
 * an abort among them, then waited for the whole generation.)
 */
function yieldToEventLoop() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

/** What tells one version of a file from another: its ETag, else its size and date. */
function validators(headers) {
  const etag = headers.get('etag');
  if (etag) return `etag ${etag}`;
  const length = headers.get('content-length');
  const modified = headers.get('last-modified');
  return length && modified ? `size ${length}, modified ${modified}` : null;
}

/**
 * Whether the server still has the version of `url` that `cached` holds. Asks with a HEAD
 * request; offline, or when the server gives no validators, the cached copy stands.
 */
async function stillCurrent(url, cached) {
  let head;
  try {
    head = await fetch(url, { method: 'HEAD', cache: 'no-store' });
  } catch {
    return true;
  }
  if (!head.ok) return true;
  const now = validators(head.headers);
  return now === null || now === validators(cached.headers);
}

/**
 * The model file, fetched into `into(size)`'s buffer (`{ buffer, view() }`, `view()` being
 * the bytes to fill: a JavaScript array, or the engine's own memory for the CPU), from the
 * Cache API when an earlier visit stored the version the server still has, otherwise
 * downloaded with progress and stored for the next visit as it arrives. With `useCache`
 * false the Cache API is left alone and the file is fetched every time.
 */
async function fetchModel(url, onProgress, useCache, into) {
  let cache = null;
  try {
    if (useCache) cache = await caches.open(MODEL_CACHE);
  } catch {
    // No Cache API (an insecure origin): fetch every time.
  }
  let response = cache ? await cache.match(url) : undefined;
  let stale = false;
  if (response && !(await stillCurrent(url, response))) {
    response = undefined;
    stale = true;
  }
  const cached = Boolean(response);
  if (!response) {
    try {
      response = await fetch(url, { cache: 'no-store' });
    } catch (e) {
      throw new CinderError(`model fetch failed: ${url}: ${message(e)}`);
    }
    if (!response.ok) throw new CinderError(`model fetch failed: ${url}: HTTP ${response.status}`);
  }
  const total = Number(response.headers.get('content-length')) || 0;
  let body = response.body;
  let storing = null;
  if (cache && !cached) {
    // The cache takes its own branch of the stream as it arrives: no whole copy is kept
    // here for it.
    const [ours, theirs] = body.tee();
    body = ours;
    const headers = {};
    for (const name of ['content-length', 'etag', 'last-modified']) {
      const value = response.headers.get(name);
      if (value) headers[name] = value;
    }
    storing = cache.put(url, new Response(theirs, { headers })).catch((e) => {
      console.warn(`cinder: the model was not cached (${message(e)}); the next visit downloads it again`);
    });
  }
  // The announced size goes straight into its buffer: no second copy to join the chunks.
  // Without one, the chunks gather in a growing array that is copied once at the end.
  let target = total ? into(total) : null;
  let gathered = total ? null : new Uint8Array(0);
  let loaded = 0;
  const reader = body.getReader();
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw new CinderError(`model fetch failed: ${url}: ${message(e)}`);
    }
    if (chunk.done) break;
    const end = loaded + chunk.value.length;
    if (target) {
      if (end > total) throw new CinderError(`model fetch failed: ${url}: more than the announced ${total} bytes`);
      target.view().set(chunk.value, loaded);
    } else {
      if (end > gathered.length) {
        const grown = new Uint8Array(Math.max(2 * gathered.length, end, 1 << 20));
        grown.set(gathered.subarray(0, loaded));
        gathered = grown;
      }
      gathered.set(chunk.value, loaded);
    }
    loaded = end;
    onProgress?.({ phase: 'download', loaded, total, cached });
  }
  if (total && loaded !== total) throw new CinderError(`model fetch failed: ${url}: got ${loaded} of ${total} bytes`);
  if (!target) {
    target = into(loaded);
    target.view().set(gathered.subarray(0, loaded));
  }
  await storing;
  return { target, size: loaded, cached, stale };
}

/**
 * Runs `open` (which requests the engine's WebGPU device) asking for WebGPU's `subgroups`
 * feature on that device where the adapter offers it and `wanted` is not false: wgpu 30
 * does not map the feature (gfx-rs/wgpu#10146), so it would never ask. `open` gets whether
 * the device will have it. The request is changed only while `open` runs.
 */
async function withSubgroups(wanted, open) {
  const adapter = wanted === false ? null : await navigator.gpu.requestAdapter();
  if (!adapter?.features.has('subgroups')) return open(false);
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (descriptor = {}) {
    const requiredFeatures = [...(descriptor.requiredFeatures ?? [])];
    if (this.features.has('subgroups') && !requiredFeatures.includes('subgroups')) requiredFeatures.push('subgroups');
    return requestDevice.call(this, { ...descriptor, requiredFeatures });
  };
  try {
    return await open(true);
  } finally {
    GPUAdapter.prototype.requestDevice = requestDevice;
  }
}

/**
 * The device `wanted` (`auto`, `gpu` or `cpu`) comes to: `auto` takes the CPU where there
 * is no WebGPU or no adapter, the GPU where the adapter is a hardware one, and `timed` where
 * it is a software one (SwiftShader, WARP, lavapipe): the engine then times a layer's
 * products on both at load and runs on the faster (`engine.info.device_timing`).
 */
export async function chooseDevice(wanted = 'auto') {
  if (!['auto', 'gpu', 'cpu'].includes(wanted)) throw new CinderError(`unknown device ${JSON.stringify(wanted)} (auto, gpu or cpu)`);
  if (wanted === 'cpu') return 'cpu';
  if (!globalThis.navigator?.gpu) {
    if (wanted === 'gpu') throw new CinderError('WebGPU is not available in this browser (navigator.gpu is missing)');
    return 'cpu';
  }
  if (wanted === 'gpu') return 'gpu';
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  const info = adapter?.info ?? {};
  const described = `${info.vendor ?? ''} ${info.architecture ?? ''} ${info.device ?? ''} ${info.description ?? ''}`;
  const software = info.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|warp|basic render/i.test(described);
  if (!adapter) return 'cpu';
  return software ? 'timed' : 'gpu';
}

/**
 * The WebAssembly engine and its step loop. `onBroken(error)` is called once if a trap
 * stops it; from then on every call fails with that error.
 */
class Core {
  #wasm;
  #looping = false;
  #broken = null;
  onBroken = null;

  /**
   * Fetches the GGUF model at `url` (progress through `onProgress({ phase, loaded, total,
   * cached })`, `phase` being `download`, `upload` then `compile`; through the Cache API
   * unless `cache` is false), loads it onto `device` (see chooseDevice) with `options` (the
   * crate's EngineOptions) and runs a short request through it, so that the kernels compile
   * before the first answer.
   */
  static async load(url, { onProgress, options, wasmUrl, device, cache = true, loras = {} } = {}) {
    const started = performance.now();
    const chosen = await chooseDevice(device);
    let exports;
    try {
      exports = await init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
    } catch (e) {
      throw new CinderError(`cannot load cinder's WebAssembly: ${message(e)}`);
    }
    // The CPU keeps its weights in the file's bytes: they go straight into the engine's
    // memory (also where the CPU may win the timing). For WebGPU they stay in a JavaScript
    // array, read tensor by tensor as the weights upload (the engine's memory never
    // shrinks).
    const inMemory = chosen !== 'gpu';
    const into = inMemory
      ? (size) => {
          let buffer;
          try {
            buffer = new ModelBytes(size);
          } catch (e) {
            throw new CinderError(message(e));
          }
          const pointer = buffer.pointer();
          // A fresh view each time: a view of the memory goes stale when the memory grows.
          return { buffer, view: () => new Uint8Array(exports.memory.buffer, pointer, size) };
        }
      : (size) => {
          const buffer = new Uint8Array(size);
          return { buffer, view: () => buffer };
        };
    const { target, size, cached, stale } = await fetchModel(url, onProgress, cache, into);
    const downloaded = performance.now();
    onProgress?.({ phase: 'upload', loaded: size, total: size, cached, device: chosen });
    let wasm;
    try {
      const engineOptions = (subgroups, on) => JSON.stringify({ ...options, subgroups, device: on === 'timed' ? 'auto' : on });
      wasm =
        chosen === 'cpu'
          ? await WasmEngine.loadInMemory(target.buffer, engineOptions(false, 'cpu'))
          : await withSubgroups(options?.subgroups, (subgroups) =>
              inMemory
                ? WasmEngine.loadInMemory(target.buffer, engineOptions(subgroups, chosen))
                : WasmEngine.load(target.buffer, engineOptions(subgroups, chosen)),
            );
    } catch (e) {
      throw isTrap(e) ? trapError(e) : new CinderError(message(e));
    }
    // LoRA adapters: `{ NAME: { url | bytes, scale } }`, fetched whole (they are small).
    for (const [name, { url: at, bytes, scale = 1 }] of Object.entries(loras ?? {})) {
      let file = bytes;
      if (!file) {
        const response = await fetch(at).catch((e) => {
          throw new CinderError(`LoRA adapter ${name}: cannot fetch ${at}: ${message(e)}`);
        });
        if (!response.ok) throw new CinderError(`LoRA adapter ${name}: ${at} answered ${response.status}`);
        file = await response.arrayBuffer();
      }
      try {
        wasm.loadLora(name, new Uint8Array(file), scale);
      } catch (e) {
        throw isTrap(e) ? trapError(e) : new CinderError(message(e));
      }
    }
    const uploaded = performance.now();
    onProgress?.({ phase: 'compile', loaded: size, total: size, cached, device: chosen });
    try {
      await wasm.warmUp();
    } catch (e) {
      throw isTrap(e) ? trapError(e) : new CinderError(`compiling the kernels: ${message(e)}`);
    }
    const done = performance.now();
    const loadStats = {
      cached,
      stale,
      bytes: size,
      fetch_s: (downloaded - started) / 1000,
      upload_s: (uploaded - downloaded) / 1000,
      compile_s: (done - uploaded) / 1000,
      load_s: (done - started) / 1000,
      // The WebAssembly heap never shrinks: its size after loading is its peak so far.
      wasm_memory_bytes: exports.memory.buffer.byteLength,
    };
    return new Core(wasm, loadStats);
  }

  constructor(wasm, loadStats) {
    this.#wasm = wasm;
    /** Adapter, context length, vocabulary, weight bytes, KV pool. */
    this.info = JSON.parse(wasm.info());
    /** `{ cached, stale, bytes, fetch_s, upload_s, compile_s, load_s, wasm_memory_bytes }` of the load. */
    this.loadStats = loadStats;
  }

  /**
   * Queues an OpenAI body for `endpoint` ('completions', 'chat' or 'embeddings') and
   * returns the request's id; each event of its choices goes to `onEvent(event)`, the last
   * with `done`. Throws a CinderError if the body is refused.
   */
  submit(body, endpoint, onEvent) {
    if (this.#broken) throw this.#broken;
    let id;
    try {
      id = this.#wasm.submit(JSON.stringify(body), endpoint, (json) => onEvent(JSON.parse(json)));
    } catch (e) {
      throw this.#failure(e);
    }
    this.#run();
    return id;
  }

  /** Ends request `id`: each choice's last event has `finish_reason` "abort". */
  abort(id) {
    if (this.#broken) return;
    try {
      this.#wasm.abort(id);
    } catch (e) {
      this.#fatal(e);
    }
  }

  /** Starts timing the engine's steps: host time per part and device time per kernel. */
  profileStart() {
    if (this.#broken) throw this.#broken;
    this.#wasm.profileStart();
  }

  /**
   * The profile since `profileStart`: `{ steps, host: { launch_ms, wait_ms, land_ms },
   * device_timestamps, device_ms, kernels: [{ kernel, dispatches, ms }] }`, totals.
   */
  async profileFinish() {
    if (this.#broken) throw this.#broken;
    try {
      return JSON.parse(await this.#wasm.profileFinish());
    } catch (e) {
      throw this.#failure(e);
    }
  }

  /** The step loop: one engine step at a time while there is work, yielding in between. */
  async #run() {
    if (this.#looping) return;
    this.#looping = true;
    try {
      for (;;) {
        try {
          if (this.#broken || !this.#wasm.hasWork()) break;
          const ran = await this.#wasm.step();
          // Nothing fit this step (waiting on memory): give the event loop a moment.
          if (!ran) await new Promise((resolve) => setTimeout(resolve, 5));
        } catch (e) {
          if (isTrap(e)) {
            this.#fatal(e);
            break;
          }
          // A failed step is retried; the engine ends requests that fail three in a row.
          console.warn(`cinder: engine step failed: ${message(e)}`);
        }
        await yieldToEventLoop();
      }
    } finally {
      this.#looping = false;
    }
  }

  /** The error to report for `e`: a trap stops the engine for good. */
  #failure(e) {
    return isTrap(e) ? this.#fatal(e) : new CinderError(message(e));
  }

  #fatal(e) {
    if (!this.#broken) {
      this.#broken = trapError(e);
      this.onBroken?.(this.#broken);
    }
    return this.#broken;
  }
}

/**
 * The engine behind messages, the same whether they cross to a worker (worker.js) or stay
 * on the page's thread. Returns the function that receives the page's messages; `post`
 * sends the engine's. Requests carry the page's ids; their events go back under them.
 *
 *   page -> engine: { op: 'load', url, options, wasmUrl, device, cache, loras }, { op: 'submit', id, body, endpoint },
 *                   { op: 'abort', id }, { op: 'profileStart' }, { op: 'profileFinish', reply }
 *   engine -> page: { op: 'progress', progress }, { op: 'loaded', info, loadStats },
 *                   { op: 'loadFailed', error }, { op: 'accepted', id }, { op: 'refused', id, error },
 *                   { op: 'event', id, event }, { op: 'broken', error },
 *                   { op: 'profile', reply, profile?, error? }
 */
export function engineHost(post) {
  let core = null;
  /** The page's request ids to the engine's. */
  const engineIds = new Map();

  async function load({ url, options, wasmUrl, device, cache, loras }) {
    try {
      core = await Core.load(url, { options, wasmUrl, device, cache, loras, onProgress: (progress) => post({ op: 'progress', progress }) });
    } catch (e) {
      post({ op: 'loadFailed', error: message(e) });
      return;
    }
    core.onBroken = (error) => post({ op: 'broken', error: error.message });
    post({ op: 'loaded', info: core.info, loadStats: core.loadStats });
  }

  function submit({ id, body, endpoint }) {
    let engineId;
    try {
      engineId = core.submit(body, endpoint, (event) => {
        if (event.done) engineIds.delete(id);
        post({ op: 'event', id, event: { ...event, id } });
      });
    } catch (e) {
      post({ op: 'refused', id, error: message(e) });
      return;
    }
    engineIds.set(id, engineId);
    post({ op: 'accepted', id });
  }

  async function profileFinish({ reply }) {
    try {
      post({ op: 'profile', reply, profile: await core.profileFinish() });
    } catch (e) {
      post({ op: 'profile', reply, error: message(e) });
    }
  }

  return (data) => {
    switch (data.op) {
      case 'load':
        return load(data);
      case 'submit':
        return submit(data);
      case 'abort': {
        const engineId = engineIds.get(data.id);
        if (engineId !== undefined) core.abort(engineId);
        return;
      }
      case 'profileStart':
        // A broken engine answers the profileFinish that follows with its error.
        try {
          core.profileStart();
        } catch {}
        return;
      case 'profileFinish':
        return profileFinish(data);
      default:
        console.warn(`cinder: unknown message ${JSON.stringify(data.op)}`);
    }
  };
}
