// The page's two paths (cinder on the CPU and on WebGPU) and wllama (llama.cpp in
// WebAssembly, npm @wllama/wllama) on one GGUF file, each in a fresh headless Chromium:
// first-token time, decode tok/s (greedy, after a warm-up generation) and the peak resident
// memory of the browser's processes; `blank` is the browser with an empty page, the memory
// the others add to; `wllama-2` runs wllama on two threads in a cross-origin-isolated page.
// Both engines fetch the model without a cache (cinder's `?cache=0`, wllama's `useCache:
// false`). Prints one JSON object per engine, then a table.
// `scripts/browser-bench.sh` sets it up and runs it:
//
//   node tests/browser/bench.cjs URL '{"prompt": "...", "max_tokens": 64, "engines": [...]}'
//
// URL serves the demo (web/dist) with wllama's `esm/` under `wllama/`, an empty `blank.html`
// and the model at `model.gguf`.

const path = require('path');
const os = require('os');
const fs = require('fs');

const nodeDir = process.env.CINDER_NODE_DIR || path.join(os.homedir(), '.cache/cinder/node');
const { chromium } = require(path.join(nodeDir, 'node_modules', 'playwright-core'));

const [url, specJson] = process.argv.slice(2);
const spec = { prompt: 'Once upon a time', max_tokens: 64, timeout_s: 900, engines: ['blank', 'cinder-cpu', 'cinder-gpu', 'wllama', 'wllama-2'], ...JSON.parse(specJson || '{}') };

/** Resident bytes of `pid` and every process below it. */
function treeRss(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch {
      // The process ended.
    }
  }
  let total = 0;
  const stack = [pid];
  while (stack.length) {
    const p = stack.pop();
    try {
      const rss = fs.readFileSync(`/proc/${p}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
      if (rss) total += Number(rss[1]) * 1024;
    } catch {
      // The process ended.
    }
    stack.push(...(children.get(p) ?? []));
  }
  return total;
}

async function cinder(page, device) {
  await page.goto(new URL(`/?device=${device}&cache=0`, url).href);
  await page.waitForFunction(() => /ready|error/.test(document.querySelector('[data-testid="status"]').textContent), null, {
    timeout: spec.timeout_s * 1000,
  });
  const status = await page.getByTestId('status').textContent();
  if (!/ready/.test(status)) throw new Error(status);
  return page.evaluate(async ({ prompt, max_tokens }) => {
    const engine = window.cinder.engine;
    const options = { max_tokens, temperature: 0, ignore_eos: true };
    await engine.generate(prompt, options);
    const run = await engine.generate(prompt, options);
    return { adapter: engine.info.adapter, device: engine.info.device, load_s: engine.loadStats.load_s, wasm_memory_mb: Math.round(engine.loadStats.wasm_memory_bytes / 1e6), first_token_s: run.first_token_s, tok_s: run.tokens_per_s, tokens: run.completion_tokens };
  }, spec);
}

async function wllama(page, threads) {
  await page.goto(new URL('/blank.html', url).href);
  return page.evaluate(async ({ prompt, max_tokens, threads }) => {
    const { Wllama } = await import('/wllama/esm/index.js');
    const started = performance.now();
    const wllama = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' });
    await wllama.loadModelFromUrl(new URL('/model.gguf', location.href).href, { n_threads: threads, n_ctx: 1024, n_gpu_layers: 0, useCache: false });
    const load_s = (performance.now() - started) / 1000;
    const generate = async () => {
      const begun = performance.now();
      let first = null;
      let chunks = 0;
      await wllama.createCompletion({
        prompt, max_tokens, temperature: 0, stream: true,
        onData: () => {
          first ??= performance.now();
          chunks += 1;
        },
      });
      const done = performance.now();
      return { first_token_s: (first - begun) / 1000, tok_s: chunks > 1 ? (chunks - 1) / ((done - first) / 1000) : 0, tokens: chunks };
    };
    await generate();
    const run = await generate();
    return { adapter: `wllama ${threads} thread(s)`, device: 'cpu', load_s, ...run };
  }, { ...spec, threads });
}

async function blank(page) {
  await page.goto(new URL('/blank.html', url).href);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  return { adapter: 'an empty page', device: '-' };
}

/**
 * Serves the empty page with the headers that make it cross-origin isolated (COOP/COEP):
 * WebAssembly threads need its SharedArrayBuffer. The server sends none; the page's
 * same-origin requests need none.
 */
async function isolate(page) {
  await page.route('**/blank.html', async (route) => {
    const response = await route.fetch();
    const headers = { ...response.headers(), 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };
    await route.fulfill({ response, headers });
  });
}

async function measure(name) {
  // A browser server: its process is the root of the tree whose memory is measured.
  const server = await chromium.launchServer({
    executablePath: process.env.CINDER_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run', '--disable-background-networking'],
  });
  const pid = server.process().pid;
  const browser = await chromium.connect(server.wsEndpoint());
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, treeRss(pid))), 100);
  try {
    const page = await browser.newPage();
    let run;
    if (name === 'blank') run = await blank(page);
    else if (name === 'wllama') run = await wllama(page, 1);
    else if (name === 'wllama-2') {
      await isolate(page);
      run = await wllama(page, 2);
    } else run = await cinder(page, name.replace('cinder-', ''));
    peak = Math.max(peak, treeRss(pid));
    return { engine: name, ...run, peak_rss_mb: Math.round(peak / 1e6) };
  } catch (e) {
    return { engine: name, error: String(e.message ?? e) };
  } finally {
    clearInterval(sampler);
    await browser.close();
    await server.close();
  }
}

(async () => {
  const results = [];
  for (const name of spec.engines) {
    const result = await measure(name);
    console.log(JSON.stringify(result));
    results.push(result);
  }
  console.log('| engine | device | first token s | decode tok/s | peak browser RSS MB |');
  console.log('|---|---|---|---|---|');
  for (const r of results) {
    if (r.error) console.log(`| ${r.engine} | error: ${r.error} | | | |`);
    else if (r.engine === 'blank') console.log(`| ${r.engine} | ${r.adapter} | | | ${r.peak_rss_mb} |`);
    else console.log(`| ${r.engine} | ${r.adapter} | ${r.first_token_s.toFixed(2)} | ${r.tok_s.toFixed(2)} | ${r.peak_rss_mb} |`);
  }
})();
