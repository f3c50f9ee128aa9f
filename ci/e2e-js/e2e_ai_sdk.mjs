// The Vercel AI SDK (`ai` with `@ai-sdk/openai`) against the local cocoon network: the
// framework most JavaScript apps reach OpenAI through. Its OpenAI provider speaks the Responses
// API by default (`openai(model)`) and chat completions on request (`openai.chat(model)`), and
// it validates every response and stream event against its own schemas, so a missing or
// mistyped field fails here even where the OpenAI SDKs pass it through.
//
// Usage: node ci/e2e-js/e2e_ai_sdk.mjs DIR/urls.json [--engine-surface]
// Needs ci/e2e-js/node_modules (ci/e2e.sh). Each check runs on both APIs; requests are sent one
// at a time, so the proxy's bill for the account moves by exactly what each one used, and the
// usage the SDK reports is compared with it.

import { createOpenAI } from '@ai-sdk/openai';
import { APICallError, generateObject, generateText, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';

import { args, assert, billed, Checks, stats, validTrip, validWeather, version, waitFor } from './checks.mjs';

const { urls, engineSurface } = args('e2e_ai_sdk');
const runner = new Checks('e2e_ai_sdk', engineSurface);
const check = (...a) => runner.check(...a);
const openai = createOpenAI({ baseURL: urls.client, apiKey: 'local' });
const model = urls.model;
console.log(
  `e2e_ai_sdk: ai ${version('ai')}, @ai-sdk/openai ${version('@ai-sdk/openai')} (node ${process.version}) against ${urls.client}`,
);

const apis = [
  ['Responses', (id = model) => openai(id)],
  ['chat', (id = model) => openai.chat(id)],
];

/** Runs `fn`; checks that the bill moved by the usage the SDK reported. */
async function billedAsReported(fn) {
  const [p0, c0] = await billed(urls);
  const { usage, detail } = await fn();
  assert(usage.inputTokens > 0 && usage.outputTokens > 0, usage);
  // The bill is written when the stream's usage event is, just before the SDK sees its end.
  await waitFor('the bill', async () => (await billed(urls))[1] > c0, 5);
  const [p1, c1] = await billed(urls);
  assert(p1 - p0 === usage.inputTokens && c1 - c0 === usage.outputTokens, 'billed', [p1 - p0, c1 - c0], usage);
  return `${detail}; billed ${usage.inputTokens}+${usage.outputTokens} as reported`;
}

const Trip = z.object({
  city: z.enum(['Paris', 'Rome', 'Oslo']),
  days: z.number().int().min(1).max(9),
  by_train: z.boolean(),
});
const weather = tool({
  description: 'The current weather in a city.',
  inputSchema: z.object({
    city: z.enum(['Paris', 'Rome', 'Oslo']),
    unit: z.enum(['celsius', 'fahrenheit']),
  }),
  execute: async ({ city, unit }) => ({ city, unit, temp: 18 }),
});

for (const [api, m] of apis) {
  await check(`${api}: generateText, usage as billed`, () =>
    billedAsReported(async () => {
      const r = await generateText({ model: m(), prompt: 'Name three colors.', maxOutputTokens: 24, maxRetries: 0 });
      assert(r.text.trim(), 'no text');
      assert(['stop', 'length'].includes(r.finishReason), r.finishReason);
      return { usage: r.usage, detail: `${r.text.length} chars, ${r.finishReason}` };
    }),
  );

  await check(`${api}: streamText, usage as billed`, () =>
    billedAsReported(async () => {
      const errors = [];
      const r = streamText({
        model: m(),
        prompt: 'Name three colors.',
        maxOutputTokens: 24,
        maxRetries: 0,
        onError: ({ error }) => errors.push(error),
      });
      let text = '';
      let parts = 0;
      for await (const delta of r.textStream) {
        text += delta;
        parts += 1;
      }
      assert(errors.length === 0, errors.map(String));
      assert(text.trim() && text === (await r.text), text);
      return { usage: await r.usage, detail: `${parts} deltas, ${text.length} chars, ${await r.finishReason}` };
    }),
  );

  await check(`${api}: an unknown model is an APICallError with the 404`, async () => {
    try {
      await generateText({ model: m('no-such-model'), prompt: 'x', maxRetries: 0 });
    } catch (e) {
      assert(APICallError.isInstance(e), e?.constructor?.name, e?.message);
      assert(e.statusCode === 404 && !e.isRetryable, e.statusCode, e.isRetryable);
      return e.message.slice(0, 80);
    }
    throw new Error('accepted');
  });

  await check(
    `${api}: generateObject with a zod schema`,
    async () => {
      const r = await generateObject({
        model: m(),
        schema: Trip,
        prompt: 'Plan a short trip: a city, a number of days, by train or not.',
        temperature: 0,
        maxOutputTokens: 200,
        maxRetries: 0,
      });
      validTrip(r.object);
      return JSON.stringify(r.object);
    },
    { engine: true },
  );

  await check(
    `${api}: a multi-step tool call (the SDK runs the tool, the model answers)`,
    async () => {
      const r = await generateText({
        model: m(),
        tools: { get_weather: weather },
        prompt: 'What is the weather in Paris?',
        maxOutputTokens: 64,
        temperature: 0,
        maxRetries: 0,
        stopWhen: stepCountIs(2),
        prepareStep: ({ stepNumber }) =>
          stepNumber === 0 ? { toolChoice: { type: 'tool', toolName: 'get_weather' } } : { toolChoice: 'none' },
      });
      assert(r.steps.length === 2, r.steps.length);
      const calls = r.steps[0].toolCalls;
      assert(calls.length === 1 && calls[0].toolName === 'get_weather', calls);
      validWeather(calls[0].input);
      assert(r.steps[0].toolResults[0]?.output?.temp === 18, r.steps[0].toolResults);
      assert(r.text.trim(), 'no answer after the tool result');
      return `get_weather(${JSON.stringify(calls[0].input)}) then ${r.text.length} chars`;
    },
    { engine: true },
  );

  await check(
    `${api}: a streamed tool call`,
    async () => {
      const r = streamText({
        model: m(),
        tools: { get_weather: weather },
        prompt: 'What is the weather in Rome?',
        maxOutputTokens: 64,
        temperature: 0,
        maxRetries: 0,
        toolChoice: { type: 'tool', toolName: 'get_weather' },
      });
      const calls = await r.toolCalls;
      assert(calls.length === 1 && calls[0].toolName === 'get_weather', calls);
      validWeather(calls[0].input);
      return JSON.stringify(calls[0].input);
    },
    { engine: true },
  );
}

await check('an abortSignal mid-stream cancels the request at the worker', async () => {
  const before = (await stats(urls)).requests.cancelled;
  const controller = new AbortController();
  const r = streamText({
    model: openai.chat(model),
    prompt: 'Write a long story about a lighthouse.',
    maxOutputTokens: 400,
    maxRetries: 0,
    abortSignal: controller.signal,
    onError: () => {},
  });
  let parts = 0;
  try {
    for await (const _ of r.textStream) {
      parts += 1;
      if (parts === 3) controller.abort();
    }
  } catch (e) {
    assert(e?.name === 'AbortError', e?.name, e?.message);
  }
  const left = performance.now();
  await waitFor('the cancel at the proxy', async () => (await stats(urls)).requests.cancelled > before);
  return `aborted after ${parts} deltas; cancelled ${(performance.now() - left).toFixed(0)} ms later`;
}, { engine: true });

process.exit(runner.summary());
