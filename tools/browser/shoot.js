#!/usr/bin/env node
// Browser test of the built-in dashboards: opens a URL in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core), waits until every panel has drawn, asserts
// that the panels hold data, the batch/speed boundary is drawn on every time chart and the
// freshness box loaded, writes a full-page screenshot, then uses the page as a person would:
// exports a panel as CSV (the file is downloaded and read), drills down by clicking a bar
// (every panel must then query with that filter, the URL must carry it, the bar panel must
// show that value only), and goes Back (the filter must be gone). It prints a JSON summary on
// stdout. Exit status 0 when every check passed, 1 when one failed, 2 on a usage error.
//
//   node shoot.js --url http://127.0.0.1:8080/ --out ../../artifacts/dashboard.png
//
// Options: --timeout MS (default 90000: panels may be empty while the stack warms up; the
// page is refreshed until they fill), --api-key KEY (stored where the page reads it),
// --no-boundary (do not require the boundary, e.g. before any day is exact), --chromium PATH
// (default $CHROMIUM or /usr/bin/chromium), --width/--height of the viewport, --no-interact
// (skip the export and the drill-down).
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
      'no-interact': { type: 'boolean', default: false },
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

// waitRefresh waits until the page finished a refresh after the one counted in before.
async function waitRefresh(page, before) {
  await page.waitForFunction((n) => Number(document.body.dataset.refreshes || 0) > n && document.body.dataset.state === 'ready',
    before, { timeout: 60000, polling: 200 });
}

// exportPanel downloads a panel's CSV through its button and checks the file.
async function exportPanel(page, failed) {
  const id = await page.evaluate(() => {
    const ok = [...document.querySelectorAll('.panel[data-state="ok"]')];
    const pick = ok.find((p) => p.dataset.panelType === 'table') || ok.find((p) => p.dataset.panelType !== 'stat') || ok[0];
    return pick ? pick.dataset.panel : '';
  });
  if (!id) {
    failed.push('export: no panel with data to export');
    return null;
  }
  const sel = `.panel[data-panel="${id}"]`;
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 30000 }),
    page.click(`${sel} [data-export]`),
  ]);
  const file = await download.path();
  const text = fs.readFileSync(file, 'utf8');
  const lines = text.split('\n').filter((l) => l !== '');
  await page.waitForFunction((s) => document.querySelector(s).dataset.exportState === 'ok', sel, { timeout: 10000, polling: 100 }).catch(() => {});
  const attrs = await page.evaluate((s) => ({ ...document.querySelector(s).dataset }), sel);
  const header = (lines[0] || '').split(',');
  const report = { panel: id, file: download.suggestedFilename(), header, lines: lines.length, rows: Number(attrs.exportRows), truncated: attrs.exportTruncated };
  if (attrs.exportState !== 'ok') failed.push(`export of panel ${id}: state ${attrs.exportState} ${attrs.exportError || ''}`);
  if (!header.includes('time') || !header.includes('source') || !header.includes('exact')) failed.push(`export of panel ${id}: header ${lines[0]}`);
  if (lines.length < 2) failed.push(`export of panel ${id}: no rows in the CSV`);
  if (Number(attrs.exportRows) !== lines.length - 1) failed.push(`export of panel ${id}: the page counted ${attrs.exportRows} rows, the file holds ${lines.length - 1}`);
  if (!/\.csv$/.test(download.suggestedFilename())) failed.push(`export of panel ${id}: file name ${download.suggestedFilename()}`);
  return report;
}

// drillDown clicks the first bar of a bar panel with several bars and checks that the page
// filters on its value everywhere, then goes Back and checks the filter is gone.
async function drillDown(page, failed, out) {
  const target = await page.evaluate(() => {
    for (const p of document.querySelectorAll('.panel[data-panel-type="bar"][data-state="ok"]')) {
      const bars = p.querySelectorAll('.bar-row[data-drill]');
      if (bars.length >= 2) return { panel: p.dataset.panel, value: bars[0].dataset.drill, bars: bars.length };
    }
    return null;
  });
  if (!target) {
    failed.push('drill-down: no bar panel with two bars to click');
    return null;
  }
  const before = await page.evaluate(() => Number(document.body.dataset.refreshes || 0));
  await page.click(`.panel[data-panel="${target.panel}"] .bar-row[data-drill]`);
  await waitRefresh(page, before);
  const after = await page.evaluate((t) => {
    const p = document.querySelector(`.panel[data-panel="${t.panel}"]`);
    const bars = [...p.querySelectorAll('.bar-row')].map((b) => b.querySelector('.bar-label').textContent);
    const panels = [...document.querySelectorAll('[data-panel]')].map((x) => ({ id: x.dataset.panel, state: x.dataset.state, filters: x.dataset.filters || '[]', error: x.dataset.error }));
    return { hash: decodeURIComponent(location.hash), filters: document.body.dataset.filters, chips: document.querySelectorAll('#filter-chips .chip').length, bars, panels };
  }, target);
  const report = { ...target, after };
  let dim = '';
  try { dim = (JSON.parse(after.filters || '[]')[0] || {}).dimension || ''; } catch (e) { /* reported below */ }
  const want = (f) => f.some((x) => x.dimension === dim && x.values.includes(target.value));
  if (!dim || !want(JSON.parse(after.filters || '[]'))) failed.push(`drill-down on ${target.value}: page filters ${after.filters}`);
  if (!after.hash.includes('filters=') || !after.hash.includes(target.value)) failed.push(`drill-down on ${target.value}: the URL does not carry the filter: ${after.hash}`);
  if (after.chips !== 1) failed.push(`drill-down on ${target.value}: ${after.chips} filter chips, want 1`);
  if (after.bars.length !== 1 || after.bars[0] !== (target.value || '(empty)')) failed.push(`drill-down on ${target.value}: panel ${target.panel} shows bars ${after.bars.join(', ')}`);
  for (const p of after.panels) {
    if (p.state === 'error') failed.push(`after the drill-down, panel ${p.id}: ${p.error}`);
    let f = [];
    try { f = JSON.parse(p.filters); } catch (e) { /* reported below */ }
    if (!want(f)) failed.push(`after the drill-down, panel ${p.id} queried with filters ${p.filters}`);
  }
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: out, fullPage: true });
  report.screenshot = path.resolve(out);
  // Back undoes the drill-down.
  const n = await page.evaluate(() => Number(document.body.dataset.refreshes || 0));
  await page.goBack();
  await waitRefresh(page, n).catch(() => {});
  const back = await page.evaluate(() => ({ filters: document.body.dataset.filters, hash: decodeURIComponent(location.hash) }));
  report.back = back;
  if (back.filters !== '[]' || back.hash.includes('filters=')) failed.push(`Back after the drill-down kept the filter: ${back.filters} ${back.hash}`);
  return report;
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
      acceptDownloads: true,
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
    fs.mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
    await page.screenshot({ path: opts.out, fullPage: true });
    let exported = null;
    let drilled = null;
    if (!failed.length && !opts['no-interact']) {
      exported = await exportPanel(page, failed);
      drilled = await drillDown(page, failed, opts.out.replace(/(\.png)?$/, '-drill.png'));
    }
    for (const e of pageErrors) if (!/Failed to load resource/.test(e)) failed.push(`page error: ${e}`);

    summary = {
      ok: failed.length === 0,
      url: opts.url,
      screenshot: path.resolve(opts.out),
      took_ms: Date.now() - started,
      failures: failed,
      http_errors: httpErrors,
      export: exported,
      drill_down: drilled,
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
