// The demo page: loads the model, chats with streaming output, and compares N prompts
// batched against the same N run one after another. `?model=URL` loads another GGUF file;
// `?worker=0` runs the engine on the page's thread instead of a worker; `?profile=1` times
// every answer's steps and shows where they went (kernels on the device, the host's parts);
// `?subgroups=0` keeps the portable kernels where the browser offers subgroups; `?device=`
// picks `auto`, `gpu` or `cpu`; `?cache=0` fetches the model without the Cache API.

import { Engine } from './cinder.js';

const $ = (id) => document.getElementById(id);
const status = (text) => ($('status').textContent = text);
const params = new URLSearchParams(location.search);
const modelUrl = params.get('model') ?? '/model.gguf';
const inWorker = params.get('worker') !== '0';
const profiling = params.get('profile') === '1';
const options = params.get('subgroups') === '0' ? { subgroups: false } : {};
const device = params.get('device') ?? 'auto';
const cache = params.get('cache') !== '0';

let engine = null;
let current = null;

async function load() {
  status(`loading ${modelUrl}…`);
  try {
    engine = await Engine.load(modelUrl, {
      worker: inWorker,
      device,
      cache,
      options,
      onProgress: ({ phase, loaded, total, cached, device: on }) => {
        const mb = (n) => (n / 1e6).toFixed(1);
        if (phase === 'download') {
          $('progress').value = total ? loaded / total : 0;
          status(`${cached ? 'reading cached' : 'downloading'} model: ${mb(loaded)} / ${total ? mb(total) : '?'} MB`);
        } else if (phase === 'upload') {
          const what = { cpu: 'loading weights for the CPU…', gpu: 'uploading weights to the GPU…', timed: 'timing the CPU and the software GPU, then loading weights…' };
          status(what[on]);
        } else {
          status(on === 'gpu' ? 'compiling the GPU kernels…' : 'running a first request…');
        }
      },
    });
  } catch (e) {
    status(`error: ${e.message}`);
    $('progress').hidden = true;
    return;
  }
  window.cinder = { engine };
  $('progress').value = 1;
  const { adapter, device: runsOn, context_length: context, kv_cache_type: kvType, device_timing: timing } = engine.info;
  const { load_s: seconds, cached } = engine.loadStats;
  const where = inWorker ? 'in a worker' : "on the page's thread";
  // `auto` on a software adapter timed both paths: say what each took.
  const ms = (t) => (t === null ? 'failed' : `${t.toFixed(1)} ms`);
  const timed = timing ? `; a layer took ${ms(timing.cpu_ms)} on the CPU, ${ms(timing.gpu_ms)} on ${timing.adapter}` : '';
  status(`ready on the ${runsOn.toUpperCase()}: ${adapter}; context ${context} tokens (KV cache ${kvType}); ${where}; loaded in ${seconds.toFixed(1)} s${cached ? ' (cached)' : ''}${timed}`);
  for (const id of ['send', 'batch-run']) $(id).disabled = false;
}

async function send() {
  const text = $('prompt').value.trim();
  if (!text) return;
  $('output').textContent = '';
  $('speed').textContent = '';
  $('send').disabled = true;
  $('stop').disabled = false;
  const options = { max_tokens: Number($('max-tokens').value), temperature: Number($('temperature').value) };
  try {
    const messages = engine.info.chat_template ? [{ role: 'user', content: text }] : text;
    if (profiling) engine.profileStart();
    current = engine.generate(messages, options, (piece) => ($('output').textContent += piece));
    const result = await current;
    if (profiling) showProfile(await engine.profileFinish());
    $('speed').textContent =
      `${result.completion_tokens} tokens, ${result.tokens_per_s.toFixed(2)} tokens/s, first token after ${(result.first_token_s ?? 0).toFixed(2)} s (${result.finish_reason})`;
  } catch (e) {
    $('speed').textContent = `error: ${e.message}`;
  } finally {
    current = null;
    $('send').disabled = false;
    $('stop').disabled = true;
  }
}

/** Where the answer's steps spent their time, per step: the host's parts, then each kernel. */
function showProfile(profile) {
  window.cinder.profile = profile;
  const table = $('profile-table');
  table.hidden = false;
  while (table.rows.length > 1) table.deleteRow(1);
  const steps = Math.max(profile.steps, 1);
  const stepMs = (profile.host.launch_ms + profile.host.wait_ms + profile.host.land_ms) / steps;
  const row = (name, dispatches, ms) => {
    const tr = table.insertRow();
    for (const cell of [name, dispatches, (ms / steps).toFixed(3), `${((100 * ms) / steps / stepMs).toFixed(1)} %`]) tr.insertCell().textContent = cell;
  };
  row('host: plan and launch', '', profile.host.launch_ms);
  row('host: await the device', '', profile.host.wait_ms);
  row('host: sample', '', profile.host.land_ms);
  for (const k of profile.kernels) row(k.kernel, (k.dispatches / steps).toFixed(1), k.ms);
  $('profile-summary').textContent = `${profile.steps} steps, ${stepMs.toFixed(1)} ms per step; kernels ${(profile.device_ms / steps).toFixed(1)} ms per step on the device (${profile.device_timestamps ? 'timestamp queries' : "the host's clock"})`;
}

/** N prompts: all at once (one batch per step), then one after another. */
async function batch() {
  const n = Number($('batch-n').value);
  const tokens = Number($('batch-tokens').value);
  const prompts = Array.from({ length: n }, (_, i) => `Story ${i + 1}: once upon a time`);
  const options = { max_tokens: tokens, temperature: 0, ignore_eos: true };
  const table = $('batch-table');
  table.hidden = false;
  $('batch-run').disabled = true;
  const row = (mode, results, seconds) => {
    const total = results.reduce((sum, r) => sum + r.completion_tokens, 0);
    const tr = table.insertRow();
    for (const cell of [mode, n, total, seconds.toFixed(2), (total / seconds).toFixed(2)]) tr.insertCell().textContent = cell;
    return total / seconds;
  };
  try {
    let start = performance.now();
    const batched = row('batched', await Promise.all(prompts.map((p) => engine.generate(p, options))), (performance.now() - start) / 1000);
    start = performance.now();
    const one = [];
    for (const p of prompts) one.push(await engine.generate(p, options));
    const sequential = row('sequential', one, (performance.now() - start) / 1000);
    const tr = table.insertRow();
    tr.insertCell().textContent = 'batched / sequential';
    tr.insertCell().colSpan = 4;
    tr.cells[1].textContent = `${(batched / sequential).toFixed(2)}×`;
  } catch (e) {
    table.insertRow().insertCell().textContent = `error: ${e.message}`;
  } finally {
    $('batch-run').disabled = false;
  }
}

$('send').addEventListener('click', send);
$('stop').addEventListener('click', () => current && engine.abort(current.id));
$('batch-run').addEventListener('click', batch);
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) send();
});
load();
