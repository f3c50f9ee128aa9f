// The official OpenAI JavaScript SDK against the local cocoon network: a second real client
// beside the Python SDK (ci/e2e_openai*.py), with its own HTTP stack (fetch), SSE parser,
// stream helpers, abort path and error classes.
//
// Usage: node ci/e2e-js/e2e_openai.mjs DIR/urls.json [--engine-surface]
// Needs ci/e2e-js/node_modules: ci/e2e.sh installs the committed package-lock.json into a
// cache with `npm ci` and links it there.
//
// Runs against the network `cocoon-host launch --local` started (ci/e2e.sh): the real
// SmolLM2-135M model, so text is only checked for shape. Checks that need the engine to
// honour tools and JSON schemas are skipped (and listed) without --engine-surface. Prints one
// line per check (`ok` / `FAIL` / `skip`) and a summary; exits 1 if any check failed.

import OpenAI from 'openai';

import { args, assert, billed, Checks, stats, tools, validTrip, validWeather, version, waitFor } from './checks.mjs';

const { urls, engineSurface } = args('e2e_openai');
const runner = new Checks('e2e_openai_js', engineSurface);
const check = (...a) => runner.check(...a);
const base = urls.client;
const model = urls.model;
const sdk = new OpenAI({ baseURL: base, apiKey: 'local', maxRetries: 0, timeout: 600_000 });
console.log(
  `e2e_openai_js: openai ${version('openai')} (node ${process.version}) against ${base}, model ${model}`,
);

/** Runs `fn`, which must throw the SDK error `cls` with `status` (and `code`, `param` if given). */
async function refused(fn, cls, status, { code, param } = {}) {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    assert(e.status === status, 'status', e.status);
    if (code !== undefined) assert(e.code === code, 'code', e.code, e.error);
    if (param !== undefined) assert(e.param === param, 'param', e.param, e.error);
    return e.message.slice(0, 90);
  }
  throw new Error('not refused');
}

const cancelled = async () => (await stats(urls)).requests.cancelled;
const promptBilled = async () => (await billed(urls))[0];
const weatherChat = { type: 'function', function: tools.weather };
const weatherResponses = { type: 'function', ...tools.weather, strict: true };

const ask = [{ role: 'user', content: 'Name three colors.' }];

// --- models ----------------------------------------------------------------------------------

await check('models.list and models.retrieve; an unknown id is NotFoundError', async () => {
  const ids = [];
  for await (const m of sdk.models.list()) ids.push(m.id);
  assert(ids.includes(model), ids);
  const m = await sdk.models.retrieve(model);
  assert(m.id === model && m.object === 'model' && m.owned_by === 'cocoon', m);
  const why = await refused(
    () => sdk.models.retrieve('no-such-org/no-such-model'),
    OpenAI.NotFoundError,
    404,
    { code: 'model_not_found' },
  );
  return `${ids.join(', ')}; ${why}`;
});

// --- chat completions ------------------------------------------------------------------------

await check('non-streamed chat: content, usage, the request id the SDK reads', async () => {
  const { data, response } = await sdk.chat.completions
    .create({ model, messages: ask, max_tokens: 24 })
    .withResponse();
  assert(data.object === 'chat.completion', data.object);
  const content = data.choices[0].message.content;
  assert(content && content.trim(), 'no content');
  assert(['stop', 'length'].includes(data.choices[0].finish_reason), data.choices[0].finish_reason);
  assert(data.usage.completion_tokens > 0 && data.usage.prompt_tokens > 0, data.usage);
  const id = response.headers.get('x-request-id');
  assert(id && data._request_id === id, 'x-request-id', id, data._request_id);
  return `${content.length} chars, usage ${data.usage.prompt_tokens}+${data.usage.completion_tokens}, request ${id}`;
});

await check('streamed chat with include_usage (for await)', async () => {
  const stream = await sdk.chat.completions.create({
    model,
    messages: ask,
    max_tokens: 24,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.usage) {
      assert(usage === null, 'two usage chunks');
      usage = chunk.usage;
    }
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      finish = c.finish_reason ?? finish;
    }
  }
  assert(text.trim(), 'no text');
  assert(usage && usage.completion_tokens > 0, usage);
  assert(['stop', 'length'].includes(finish), finish);
  return `${chunks} chunks, ${text.length} chars, usage ${usage.prompt_tokens}+${usage.completion_tokens}`;
});

await check('chat.completions.stream helper: deltas and finalChatCompletion agree', async () => {
  const stream = sdk.chat.completions.stream({ model, messages: ask, max_tokens: 24 });
  let deltas = '';
  stream.on('content', (delta) => {
    deltas += delta;
  });
  const final = await stream.finalChatCompletion();
  const content = final.choices[0].message.content;
  assert(content && content === deltas, content, deltas);
  return `${content.length} chars`;
});

await check('legacy completions, prompt as a string and as a list', async () => {
  const one = await sdk.completions.create({ model, prompt: 'The sky is', max_tokens: 12 });
  assert(one.object === 'text_completion' && one.choices[0].text, one);
  const two = await sdk.completions.create({ model, prompt: ['The sky is', 'Grass is'], max_tokens: 8 });
  assert(two.choices.length === 2, two.choices.length);
  assert(two.choices.map((c) => c.index).sort().join() === '0,1', two.choices);
  return `${one.choices[0].text.length} chars; batch of 2`;
});

await check('refusals are typed SDK errors naming the field', async () => {
  const a = await refused(
    () => sdk.chat.completions.create({ model, messages: ask, frobnicate: 1 }),
    OpenAI.BadRequestError,
    400,
    { code: 'invalid_request', param: 'frobnicate' },
  );
  await refused(
    () => sdk.chat.completions.create({ model: 'no-such-model', messages: ask }),
    OpenAI.NotFoundError,
    404,
    { code: 'model_not_found' },
  );
  return a;
});

await check('a prompt over the context is BadRequestError context_length_exceeded', async () => {
  const long = 'hello '.repeat(40000);
  const c = await refused(
    () =>
      sdk.chat.completions.create({
        model,
        messages: [{ role: 'user', content: long }],
        max_tokens: 4,
      }),
    OpenAI.BadRequestError,
    400,
    { code: 'context_length_exceeded' },
  );
  return c;
}, { engine: true });

await check('a stream aborted during the prefill of a long prompt is stopped at the worker', async () => {
  const before = await cancelled();
  const prompt0 = await promptBilled();
  const controller = new AbortController();
  const t = performance.now();
  // The head comes with the worker's first keepalive comment (~5 s into the prefill): the
  // SDK's create() resolves then, with nothing generated yet.
  const stream = await sdk.chat.completions.create(
    {
      model,
      messages: [{ role: 'user', content: 'apple banana cherry '.repeat(330) }],
      max_tokens: 8,
      stream: true,
    },
    { signal: controller.signal },
  );
  const head = (performance.now() - t) / 1000;
  let tokens = 0;
  const reading = (async () => {
    for await (const chunk of stream) tokens += chunk.choices.length;
  })();
  await new Promise((r) => setTimeout(r, 500));
  controller.abort();
  await reading; // the SDK ends an aborted stream without throwing
  const left = performance.now();
  // cocoon-client sees the app leave and cancels at the proxy, which has the worker stop.
  await waitFor('the request cancelled at the worker', async () => (await cancelled()) > before);
  const stopMs = performance.now() - left;
  await waitFor('the prompt billed', async () => (await promptBilled()) - prompt0 >= 900);
  assert(tokens === 0, 'tokens before the abort', tokens);
  // The worker is free: a short request right after completes.
  const r = await sdk.chat.completions.create({ model, messages: ask, max_tokens: 4 });
  assert(r.choices[0].message.content !== undefined, r);
  return `head after ${head.toFixed(1)} s, stopped ${stopMs.toFixed(0)} ms after the abort`;
}, { engine: true });

await check('tool call round trip through the stream helper', async () => {
  const forced = { type: 'function', function: { name: 'get_weather' } };
  const q = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const stream = sdk.chat.completions.stream({
    model,
    messages: q,
    tools: [weatherChat],
    tool_choice: forced,
    max_tokens: 64,
  });
  const final = await stream.finalChatCompletion();
  const choice = final.choices[0];
  assert(choice.finish_reason === 'tool_calls', choice.finish_reason);
  const calls = choice.message.tool_calls;
  assert(calls?.length === 1 && calls[0].function.name === 'get_weather' && calls[0].id, calls);
  const args = JSON.parse(calls[0].function.arguments);
  validWeather(args);
  const answer = await sdk.chat.completions.create({
    model,
    messages: [
      ...q,
      { role: 'assistant', content: null, tool_calls: calls },
      { role: 'tool', tool_call_id: calls[0].id, content: JSON.stringify({ temp: 18 }) },
    ],
    tools: [weatherChat],
    max_tokens: 32,
    temperature: 0,
  });
  const c2 = answer.choices[0];
  assert(c2.message.content || c2.message.tool_calls, 'empty answer');
  return `get_weather(${calls[0].function.arguments}); answer finish ${c2.finish_reason}`;
}, { engine: true });

await check('chat.completions.parse with a strict json_schema', async () => {
  const r = await sdk.chat.completions.parse({
    model,
    messages: [{ role: 'user', content: 'Plan a short trip: a city, a number of days, by train or not.' }],
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'trip', schema: tools.trip_schema, strict: true },
    },
    max_tokens: 200,
    temperature: 0,
  });
  const parsed = r.choices[0].message.parsed;
  validTrip(parsed);
  return JSON.stringify(parsed);
}, { engine: true });

// --- the Responses API -----------------------------------------------------------------------

await check('responses.create: the response object and output_text', async () => {
  const r = await sdk.responses.create({
    model,
    input: 'Name three colors.',
    instructions: 'Be brief.',
    max_output_tokens: 24,
    store: false,
  });
  assert(r.object === 'response' && r.id.startsWith('resp_'), r.id);
  assert(['completed', 'incomplete'].includes(r.status), r.status);
  assert(r.output_text && r.output_text.trim(), 'no output_text');
  assert(r.usage.output_tokens > 0 && r.usage.input_tokens > 0, r.usage);
  assert(r._request_id && r.id === `resp_${r._request_id}`, r.id, r._request_id);
  return `${r.status}, ${r.output_text.length} chars, usage ${r.usage.input_tokens}+${r.usage.output_tokens}`;
});

await check('responses.create stream: events numbered in order, deltas add up', async () => {
  const stream = await sdk.responses.create({
    model,
    input: [{ role: 'user', content: 'Name three colors.' }],
    max_output_tokens: 24,
    stream: true,
  });
  const types = [];
  let seq = 0;
  let deltas = '';
  let final = null;
  for await (const ev of stream) {
    assert(ev.sequence_number === seq, 'sequence', ev.sequence_number, seq);
    seq += 1;
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') deltas += ev.delta;
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response;
  }
  assert(types[0] === 'response.created' && types[1] === 'response.in_progress', types.slice(0, 2));
  assert(final, 'no terminal event', types.slice(-2));
  const text = final.output.find((o) => o.type === 'message').content[0].text;
  assert(text === deltas && text.trim(), text, deltas);
  return `${types.length} events, ending ${types[types.length - 1]}`;
});

await check('responses.stream helper: text deltas and finalResponse()', async () => {
  const stream = sdk.responses.stream({ model, input: 'Say hello.', max_output_tokens: 48 });
  let deltas = '';
  stream.on('response.output_text.delta', (ev) => {
    deltas += ev.delta;
  });
  const final = await stream.finalResponse();
  assert(final.output_text === deltas && deltas.trim(), final.output_text, deltas);
  return `${final.status}, ${deltas.length} chars`;
});

await check('responses: refused fields and retrieval are typed SDK errors', async () => {
  const a = await refused(
    () => sdk.responses.create({ model, input: 'x', previous_response_id: 'resp_1' }),
    OpenAI.BadRequestError,
    400,
    { param: 'previous_response_id' },
  );
  await refused(
    () => sdk.responses.create({ model, input: 'x', tools: [{ type: 'web_search' }] }),
    OpenAI.BadRequestError,
    400,
    { param: 'tools[0].type' },
  );
  const b = await refused(() => sdk.responses.retrieve('resp_1'), OpenAI.NotFoundError, 404, {
    code: 'not_found',
  });
  return `${a} | ${b}`;
});

await check('responses: function call round trip, output passed back as input', async () => {
  const input = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const r = await sdk.responses.create({
    model,
    input,
    tools: [weatherResponses],
    tool_choice: { type: 'function', name: 'get_weather' },
    max_output_tokens: 64,
  });
  const call = r.output.find((o) => o.type === 'function_call');
  assert(call && call.name === 'get_weather' && call.call_id, r.output);
  validWeather(JSON.parse(call.arguments));
  const r2 = await sdk.responses.create({
    model,
    input: [
      ...input,
      ...r.output,
      { type: 'function_call_output', call_id: call.call_id, output: JSON.stringify({ temp: 18 }) },
    ],
    tools: [weatherResponses],
    max_output_tokens: 32,
    temperature: 0,
  });
  assert(r2.output.length > 0, r2);
  return `get_weather(${call.arguments}); answer ${r2.status}`;
}, { engine: true });

// --- the end ---------------------------------------------------------------------------------

await check('every process is still alive', async () => {
  for (const [name, pid] of Object.entries(urls.pids ?? {})) {
    if (!pid) continue;
    try {
      process.kill(pid, 0);
    } catch (e) {
      throw new Error(`${name} (pid ${pid}) is gone: ${e.code}`);
    }
  }
  return Object.keys(urls.pids ?? {}).join(', ');
});

process.exit(runner.summary());
