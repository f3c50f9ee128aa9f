// The check runner the JavaScript e2e scripts share (ci/e2e-js/*.mjs), like ci/checks.py for
// the Python ones: `check(name, fn, { engine })` runs `fn` at once and prints `ok` (with the
// time and what it returned) or `FAIL` (with the error), and a failure does not stop the checks
// after it; an `engine` check needs a real engine and is skipped (and listed) unless the script
// was given --engine-surface. `summary()` prints the count and gives the exit code.
// Also the network's urls.json, the tool and schema the checks send (ci/e2e_tools.json,
// shared with the Python scripts) and their validators.

import { readFileSync } from 'node:fs';

export function args(script) {
  const [urlsPath, ...flags] = process.argv.slice(2);
  if (!urlsPath) {
    console.error(`usage: ${script}.mjs DIR/urls.json [--engine-surface]`);
    process.exit(2);
  }
  return {
    urls: JSON.parse(readFileSync(urlsPath, 'utf8')),
    engineSurface: flags.includes('--engine-surface'),
  };
}

export class Checks {
  constructor(script, engineSurface) {
    this.script = script;
    this.engineSurface = engineSurface;
    this.results = [];
  }

  async check(name, fn, { engine = false } = {}) {
    if (engine && !this.engineSurface) {
      console.log(`skip  ${name} (needs --engine-surface)`);
      return;
    }
    const t = performance.now();
    try {
      const detail = (await fn()) ?? '';
      this.results.push([name, true]);
      console.log(`ok    ${name} (${((performance.now() - t) / 1000).toFixed(1)} s) ${detail}`);
    } catch (e) {
      this.results.push([name, false]);
      console.log(`FAIL  ${name}: ${e?.stack ?? e}`);
    }
  }

  summary() {
    const failed = this.results.filter(([, ok]) => !ok).length;
    console.log(`${this.script}: ${this.results.length - failed} passed, ${failed} failed`);
    return failed ? 1 : 0;
  }
}

export function assert(cond, ...what) {
  if (!cond) throw new Error(`assertion failed: ${what.map((w) => JSON.stringify(w)).join(' ')}`);
}

/** The proxy's /jsonstats. */
export async function stats(urls) {
  const r = await fetch(urls.jsonstats);
  assert(r.ok, 'jsonstats', r.status);
  return r.json();
}

/** The account's billed usage at the proxy: [prompt, completion] tokens. */
export async function billed(urls) {
  const rec = (await stats(urls)).clients?.[urls.account] ?? {};
  return [rec.prompt_tokens ?? 0, rec.completion_tokens ?? 0];
}

export async function waitFor(what, cond, secs = 10) {
  const deadline = Date.now() + secs * 1000;
  for (;;) {
    if (await cond()) return;
    assert(Date.now() < deadline, `${what} within ${secs} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const tools = JSON.parse(readFileSync(new URL('../e2e_tools.json', import.meta.url), 'utf8'));

export function validWeather(args) {
  assert(Object.keys(args).sort().join() === 'city,unit', args);
  assert(['Paris', 'Rome', 'Oslo'].includes(args.city), args);
  assert(['celsius', 'fahrenheit'].includes(args.unit), args);
}

export function validTrip(obj) {
  assert(obj && Object.keys(obj).sort().join() === 'by_train,city,days', obj);
  assert(['Paris', 'Rome', 'Oslo'].includes(obj.city), obj);
  assert(Number.isInteger(obj.days) && obj.days >= 1 && obj.days <= 9, obj);
  assert(typeof obj.by_train === 'boolean', obj);
}

/** The version of an installed package. */
export function version(pkg) {
  const path = new URL(`./node_modules/${pkg}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(path, 'utf8')).version;
}
