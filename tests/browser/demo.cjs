// Drives the web demo in headless Chromium with WebGPU, as a user and as a script would,
// and prints what it saw as one JSON object on the last line of stdout. The Rust test
// `tests/e2e/browser.rs` starts `cinder serve --web web/dist` and checks the result.
//
//   node tests/browser/demo.cjs URL '{"prompt": "...", "max_tokens": 8, "concurrent": 4}'
//
// `"query": "profile=1&worker=0"` opens the page with those parameters; `"webgpu": false`
// starts Chromium without WebGPU; `"chromium_args": [...]` with more flags.
//
// playwright-core is found under $CINDER_NODE_DIR/node_modules (scripts/setup.sh puts it
// in ~/.cache/cinder/node); the browser is Debian's chromium.

const path = require('path');
const os = require('os');
const fs = require('fs');

const nodeDir = process.env.CINDER_NODE_DIR || path.join(os.homedir(), '.cache/cinder/node');
const { chromium } = require(path.join(nodeDir, 'node_modules', 'playwright-core'));

const [url, specJson] = process.argv.slice(2);
const spec = { max_tokens: 8, concurrent: 0, ui: true, api: false, errors: false, reload: false, timeout_s: 600, ...JSON.parse(specJson || '{}') };
const timeout = spec.timeout_s * 1000;
const pageUrl = spec.query ? `${url}${url.includes('?') ? '&' : '?'}${spec.query}` : url;

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cinder-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CINDER_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless=new', '--no-sandbox',
      ...(spec.webgpu === false ? ['--disable-features=WebGPU'] : ['--enable-unsafe-webgpu', '--enable-webgpu-developer-features']),
      '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync',
      ...(spec.chromium_args ?? []),
    ],
  });
  const result = { console: [] };
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
    const loaded = async () => {
      await page.waitForFunction(
        () => /ready|error/.test(document.querySelector('[data-testid="status"]').textContent),
        null,
        { timeout },
      );
      return page.getByTestId('status').textContent();
    };
    const started = Date.now();
    await page.goto(pageUrl);
    result.status = await loaded();
    result.load_s = (Date.now() - started) / 1000;
    if (!/ready/.test(result.status)) return result;
    result.info = await page.evaluate(() => window.cinder.engine.info);
    result.load_stats = await page.evaluate(() => window.cinder.engine.loadStats);

    // Greedy tokens through the JavaScript API, to compare with the native engine.
    const options = { max_tokens: spec.max_tokens, temperature: 0, ignore_eos: true };
    const single = await page.evaluate(
      ([prompt, options]) => window.cinder.engine.generate(prompt, options),
      [spec.prompt, options],
    );
    result.tokens = single.tokens;
    result.text = single.text;
    result.tokens_per_s = single.tokens_per_s;
    result.first_token_s = single.first_token_s;

    // Several generations at once share the engine's batches; all must finish, and the
    // first prompt's tokens must not change for being batched.
    if (spec.concurrent > 0) {
      const prompts = [spec.prompt, ...Array.from({ length: spec.concurrent - 1 }, (_, i) => `${i} ${spec.prompt} ${i}`)];
      const begun = Date.now();
      result.concurrent = await page.evaluate(
        ([prompts, options]) => Promise.all(prompts.map((p) => window.cinder.engine.generate(p, options))),
        [prompts, options],
      );
      result.concurrent_s = (Date.now() - begun) / 1000;
    }

    // The JavaScript API beyond generate(): streamed chat chunks, abort, refused options,
    // and whether the page kept running timers while the engine worked.
    if (spec.api) {
      result.api = await page.evaluate(async (maxTokens) => {
        const engine = window.cinder.engine;
        const out = {};
        const messages = [{ role: 'user', content: 'hello' }];
        const options = { max_tokens: maxTokens, temperature: 0, ignore_eos: true };
        // The page's timers tick while a generation long enough to notice a stall runs
        // (256 tokens: the CPU path makes 8 in under 10 ms).
        let ticks = 0;
        const timer = setInterval(() => (ticks += 1), 10);
        await engine.generate('tick', { max_tokens: 256, ignore_eos: true });
        clearInterval(timer);
        out.ticks_during_generation = ticks;
        const whole = await engine.chat.completions.create({ messages, ...options });
        out.chat_text = whole.choices[0].message.content;
        out.chat_finish_reason = whole.choices[0].finish_reason;
        const stream = await engine.chat.completions.create({ messages, ...options, stream: true, stream_options: { include_usage: true } });
        out.stream_text = '';
        out.stream_chunks = 0;
        for await (const chunk of stream) {
          out.stream_chunks += 1;
          if (chunk.usage) out.stream_usage = chunk.usage;
          for (const choice of chunk.choices) {
            out.stream_text += choice.delta.content ?? '';
            if (choice.finish_reason) out.stream_finish_reason = choice.finish_reason;
          }
        }
        // Structured output: the grammar tables are built on this first use.
        const schema = { type: 'string', enum: ['yes', 'no'] };
        const structured = await engine.chat.completions.create({
          messages, max_tokens: 12, temperature: 0, response_format: { type: 'json_schema', json_schema: { name: 'answer', schema } },
        });
        out.structured = structured.choices[0].message.content;
        // Tool calls, whole and streamed (one call: random weights would go on listing them).
        const tools = [
          { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { enum: ['Paris', 'Oslo'] } }, required: ['city'], additionalProperties: false } } },
          { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {}, additionalProperties: false } } },
        ];
        const toolBody = { messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 90, temperature: 1, seed: 5 };
        const called = (await engine.chat.completions.create(toolBody)).choices[0];
        out.tool_call = { finish_reason: called.finish_reason, content: called.message.content, call: called.message.tool_calls?.[0]?.function ?? null };
        // A call streams as it is written: its name first, then its arguments in pieces.
        out.tool_stream = { names: [], finish_reasons: [], arguments: '' };
        for await (const chunk of await engine.chat.completions.create({ ...toolBody, stream: true })) {
          for (const choice of chunk.choices) {
            for (const call of choice.delta.tool_calls ?? []) {
              if (call.function.name) out.tool_stream.names.push(call.function.name);
              out.tool_stream.arguments += call.function.arguments;
            }
            if (choice.finish_reason) out.tool_stream.finish_reasons.push(choice.finish_reason);
          }
        }
        // Two choices with their logprobs, whole and streamed, and through generate().
        const two = await engine.chat.completions.create({ messages, ...options, temperature: 1, seed: 7, n: 2, logprobs: true, top_logprobs: 2 });
        out.n2_choices = two.choices.map((c) => ({ index: c.index, finish_reason: c.finish_reason, logprobs: c.logprobs?.content?.length ?? null, top: c.logprobs?.content?.[0]?.top_logprobs?.length ?? null }));
        out.n2_usage = two.usage;
        const twoStream = await engine.chat.completions.create({ messages, ...options, n: 2, stream: true });
        out.n2_stream_indices = [];
        for await (const chunk of twoStream) {
          for (const choice of chunk.choices) if (choice.finish_reason) out.n2_stream_indices.push(choice.index);
        }
        const generated = await engine.generate('hello', { ...options, n: 2, logprobs: 3 });
        out.generate_n2 = {
          choices: generated.choices.length,
          completion_tokens: generated.completion_tokens,
          token_logprobs: generated.logprobs?.token_logprobs?.length ?? null,
          top: Object.keys(generated.logprobs?.top_logprobs?.[0] ?? {}).length,
        };
        // Speculative decoding by prompt lookup: the greedy tokens of plain decoding, drafts
        // verified and accepted, and the chat usage's speculative block.
        const repeating = 'one two three four five six seven eight one two three four five six seven eight one two three four';
        const greedy = { max_tokens: 24, temperature: 0, ignore_eos: true };
        const plain = await engine.generate(repeating, { ...greedy, speculative: { method: 'off' } });
        const drafted = await engine.generate(repeating, { ...greedy, speculative: { method: 'ngram', num_tokens: 4 } });
        const chatDrafted = await engine.chat.completions.create({ messages, ...greedy, speculative: { method: 'ngram' } });
        out.speculative = {
          same: JSON.stringify(plain.tokens) === JSON.stringify(drafted.tokens),
          plain: plain.speculative,
          drafted: drafted.speculative,
          chat_usage: chatDrafted.usage.speculative ?? null,
        };
        // Aborted as soon as it is sent: a fast device (the CPU path on the tiny model) would
        // finish 400 tokens before an abort sent on its first token came back.
        const long = engine.generate('abort me', { max_tokens: 400, ignore_eos: true });
        engine.abort(long.id);
        const aborted = await long;
        out.abort = { finish_reason: aborted.finish_reason, completion_tokens: aborted.completion_tokens };
        try {
          await engine.generate('x', { temperature: 5 });
          out.bad_option = 'accepted';
        } catch (e) {
          out.bad_option = `${e.name}: ${e.message}`;
        }
        // Embeddings: the server's answer (the test posts the same bodies to it), and its refusal.
        const inputs = ['The capital of France is Paris.', 'Embeddings turn text into vectors.'];
        const embedded = await engine.embeddings.create({ input: inputs, encoding_format: 'float' });
        out.embeddings = { object: embedded.object, vectors: embedded.data.map((d) => d.embedding), usage: embedded.usage };
        const cut = await engine.embeddings.create({ input: inputs[0], dimensions: 8, encoding_format: 'base64' });
        out.embeddings.base64 = cut.data[0].embedding;
        try {
          await engine.embeddings.create({ input: [] });
          out.embeddings.refused = 'accepted';
        } catch (e) {
          out.embeddings.refused = e.message;
        }
        // Bodies the server refuses: the page refuses them with the same words (one request
        // assembly for both); the test sends each to the server too.
        out.refused = [];
        for (const options of [{ echo: true }, { n: 0 }, { top_p: 0 }, { best_of: 2 }, { logit_bias: { 1: 1, '01': 2 } }, { stop: ['a'.repeat(300)] }]) {
          try {
            await engine.generate('x', { max_tokens: 1, ...options });
            out.refused.push({ options, message: 'accepted' });
          } catch (e) {
            out.refused.push({ options, message: e.message });
          }
        }
        return out;
      }, spec.max_tokens);
    }

    // The page as a user drives it: type, send, watch the answer stream in.
    // A second engine on the CPU with a LoRA adapter (its bytes given, at scale 0.5): a
    // request naming it as its model runs with it, one naming none without it.
    if (spec.lora) {
      const base64 = require('fs').readFileSync(spec.lora.path).toString('base64');
      result.lora = await page.evaluate(
        async ({ name, base64, prompt, maxTokens }) => {
          const { Engine } = await import('./cinder.js');
          const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
          const engine = await Engine.load('/model.gguf', { device: 'cpu', cache: false, loras: { [name]: { bytes, scale: 0.5 } } });
          const options = { max_tokens: maxTokens, temperature: 0, ignore_eos: true };
          const [adapted, base] = await Promise.all([engine.generate(prompt, { ...options, model: name }), engine.generate(prompt, options)]);
          let refused = null;
          try {
            await engine.generate(prompt, { ...options, lora: 'nope' });
          } catch (e) {
            refused = e.message;
          }
          return { loras: engine.info.loras, adapted: adapted.tokens, base: base.tokens, refused };
        },
        { name: spec.lora.name, base64, prompt: spec.prompt, maxTokens: spec.max_tokens },
      );
    }

    if (spec.ui) {
      await page.getByTestId('prompt').fill(spec.prompt);
      await page.evaluate((n) => (document.getElementById('max-tokens').value = String(n)), spec.max_tokens);
      await page.getByTestId('send').click();
      await page.waitForFunction(
        () => document.querySelector('[data-testid="speed"]').textContent !== '',
        null,
        { timeout },
      );
      result.ui_output = await page.getByTestId('output').textContent();
      result.ui_speed = await page.getByTestId('speed').textContent();
      result.profile = await page.evaluate(() => window.cinder.profile ?? null);
      if (result.profile) {
        result.ui_profile = await page.evaluate(() =>
          Array.from(document.querySelector('[data-testid="profile"]').rows, (r) => Array.from(r.cells, (c) => c.textContent)),
        );
        result.ui_profile_summary = await page.getByTestId('profile-summary').textContent();
      }
      // The batching panel: N prompts at once, then one after another.
      await page.evaluate((n) => {
        document.getElementById('batch-n').value = '3';
        document.getElementById('batch-tokens').value = String(n);
      }, Math.min(spec.max_tokens, 4));
      await page.getByTestId('batch-run').click();
      await page.waitForFunction(
        () => document.querySelector('[data-testid="batch-result"]').rows.length >= 4,
        null,
        { timeout },
      );
      result.ui_batch = await page.evaluate(() =>
        Array.from(document.querySelector('[data-testid="batch-result"]').rows, (r) => Array.from(r.cells, (c) => c.textContent)),
      );
    }
    // Failures a user can meet, each a clear message on the page: a model URL that is not
    // there, a browser without WebGPU.
    if (spec.errors) {
      await page.goto(new URL('/?model=/missing.gguf', url).href);
      result.missing_model_status = await loaded();
      // Asking for the GPU on the page's thread (the worker's navigator is its own).
      const bare = await context.newPage();
      await bare.addInitScript(() => delete Navigator.prototype.gpu);
      await bare.goto(new URL('/?device=gpu&worker=0', url).href);
      await bare.waitForFunction(() => /ready|error/.test(document.querySelector('[data-testid="status"]').textContent), null, { timeout });
      result.no_webgpu_status = await bare.getByTestId('status').textContent();
      await bare.close();
    }

    // A second visit: the model comes from the Cache API, not the network. With
    // `change_before_reload` (the served model file's path), a third visit after the file
    // changed on the server must download it again.
    if (spec.reload) {
      const visit = async () => {
        const again = Date.now();
        await page.goto(pageUrl);
        const status = await loaded();
        const stats = await page.evaluate(() => window.cinder?.engine.loadStats);
        return { status, load_s: (Date.now() - again) / 1000, load_stats: stats };
      };
      result.reload = await visit();
      if (spec.change_before_reload) {
        const later = new Date(Date.now() + 3600 * 1000);
        fs.utimesSync(spec.change_before_reload, later, later);
        result.reload_changed = await visit();
      }
    }
    return result;
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then(
  (result) => {
    console.log(JSON.stringify(result));
  },
  (e) => {
    console.log(JSON.stringify({ error: String(e && e.stack || e) }));
    process.exitCode = 1;
  },
);
