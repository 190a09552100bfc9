#!/usr/bin/env node
// Browser test of the built-in dashboards: opens a URL in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core), waits until every panel has drawn, asserts
// that the panels hold data, the batch/speed boundary is drawn on every time chart and the
// freshness box loaded, writes a full-page screenshot and prints a JSON summary on stdout.
// Exit status 0 when every check passed, 1 when one failed, 2 on a usage error.
//
//   node shoot.js --url http://127.0.0.1:8080/ --out ../../artifacts/dashboard.png
//
// Options: --timeout MS (default 90000: panels may be empty while the stack warms up; the
// page is refreshed until they fill), --api-key KEY (stored where the page reads it),
// --no-boundary (do not require the boundary, e.g. before any day is exact), --chromium PATH
// (default $CHROMIUM or /usr/bin/chromium), --width/--height of the viewport.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
];

function usage(msg) {
  process.stderr.write(`shoot.js: ${msg}\nusage: node shoot.js --url URL [--out PNG] [--timeout MS] [--api-key KEY] [--no-boundary] [--chromium PATH]\n`);
  process.exit(2);
}

let opts;
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' },
      out: { type: 'string', default: path.join(__dirname, '..', '..', 'artifacts', 'dashboard.png') },
      timeout: { type: 'string', default: '90000' },
      'api-key': { type: 'string', default: process.env.LAMBDA_API_KEY || '' },
      'no-boundary': { type: 'boolean', default: false },
      chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
      width: { type: 'string', default: '1440' },
      height: { type: 'string', default: '900' },
    },
  }).values;
} catch (e) {
  usage(e.message);
}
if (!opts.url) usage('--url is required');
const timeout = Number(opts.timeout);
if (!(timeout > 0)) usage(`--timeout ${opts.timeout} is not a positive number of milliseconds`);

// inspect runs in the page: what the panels and the freshness box say about themselves.
function inspect() {
  const panels = [...document.querySelectorAll('[data-panel]')].map((p) => ({
    id: p.dataset.panel,
    type: p.dataset.panelType,
    state: p.dataset.state,
    points: Number(p.dataset.points || 0),
    exactPoints: Number(p.dataset.exactPoints || 0),
    approxPoints: Number(p.dataset.approxPoints || 0),
    boundary: p.dataset.boundary,
    boundaryTime: p.dataset.boundaryTime,
    sources: p.dataset.sources,
    error: p.dataset.error,
  }));
  const f = document.getElementById('freshness');
  const banner = document.getElementById('banner');
  return {
    state: document.body.dataset.state,
    refreshes: Number(document.body.dataset.refreshes || 0),
    banner: banner && !banner.hidden ? banner.textContent : '',
    freshness: f ? f.dataset.freshness : 'missing',
    freshnessText: f ? f.innerText.slice(0, 400) : '',
    panels,
  };
}

function failures(s, requireBoundary) {
  const out = [];
  if (s.banner) out.push(`page error banner: ${s.banner}`);
  if (s.state !== 'ready') out.push(`page state is ${s.state}, not ready`);
  if (!s.panels.length) out.push('no panels on the page');
  for (const p of s.panels) {
    if (p.state !== 'ok') out.push(`panel ${p.id}: state ${p.state}${p.error ? ': ' + p.error : ''}`);
    else if (!(p.points > 0)) out.push(`panel ${p.id}: no points`);
    if (p.type === 'timeseries' && requireBoundary && p.boundary !== '1') {
      out.push(`panel ${p.id}: batch/speed boundary not drawn (boundary time ${p.boundaryTime || 'none'})`);
    }
  }
  if (s.freshness !== 'ok') out.push(`freshness box is ${s.freshness}: ${s.freshnessText}`);
  return out;
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lambda-chromium-'));
  const pageErrors = [];
  const httpErrors = [];
  let context;
  let summary;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: Number(opts.width), height: Number(opts.height) },
      deviceScaleFactor: 1,
      timezoneId: 'UTC',
    });
    if (opts['api-key']) {
      await context.addInitScript((k) => localStorage.setItem('lambda.apiKey', k), opts['api-key']);
    }
    const page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
    page.on('response', (r) => { if (r.status() >= 400) httpErrors.push(`${r.status()} ${r.request().method()} ${r.url()}`); });
    page.on('requestfailed', (r) => httpErrors.push(`failed ${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`));

    const started = Date.now();
    await page.goto(opts.url, { waitUntil: 'load', timeout });
    // Wait for the first complete render, then until the checks pass or time runs out,
    // asking the page for a refresh now and then: a fresh stack fills up while we wait.
    await page.waitForFunction(() => document.body.dataset.state === 'ready' || document.body.dataset.state === 'error',
      null, { timeout, polling: 250 });
    let state = await page.evaluate(inspect);
    let failed = failures(state, !opts['no-boundary']);
    let lastReload = Date.now();
    while (failed.length && Date.now() - started < timeout) {
      await page.waitForTimeout(1000);
      if (Date.now() - lastReload > 5000) {
        lastReload = Date.now();
        const refreshes = state.refreshes;
        await page.click('#reload').catch(() => {});
        await page.waitForFunction((n) => Number(document.body.dataset.refreshes || 0) > n || document.body.dataset.state === 'error',
          refreshes, { timeout: 30000, polling: 250 }).catch(() => {});
      }
      state = await page.evaluate(inspect);
      failed = failures(state, !opts['no-boundary']);
    }
    for (const e of pageErrors) if (!/Failed to load resource/.test(e)) failed.push(`page error: ${e}`);

    fs.mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
    await page.screenshot({ path: opts.out, fullPage: true });
    summary = {
      ok: failed.length === 0,
      url: opts.url,
      screenshot: path.resolve(opts.out),
      took_ms: Date.now() - started,
      failures: failed,
      http_errors: httpErrors,
      page: state,
    };
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  process.exitCode = summary.ok ? 0 : 1;
}

main().catch((e) => {
  process.stderr.write(`shoot.js: ${e && e.stack ? e.stack : e}\n`);
  process.exitCode = 1;
});
