// The built-in dashboards of the Lambda platform: plain JavaScript over the HTTP API and uPlot.
//
// Every URL is relative (api/v1/…, dashboards.json) so the page works behind a path prefix.
// All of the page's state (dataset, dashboard, range or custom from/to, granularity, filters,
// time zone, refresh) is in the URL's fragment, so a link reproduces the view.
//
// Each panel element carries data attributes for the browser test and for anyone scripting
// the page: data-panel, data-panel-type, data-state (loading|ok|empty|error), data-points,
// data-exact-points, data-approx-points, data-sources, data-filters (the filters its query
// used, JSON), after an export data-export-state (ok|error), data-export-rows and
// data-export-truncated, and on time charts data-boundary ("1" when the batch/speed boundary
// lies inside the chart and was drawn) with data-boundary-time, and data-partial ("1" when the
// current, still filling bucket is in the chart, drawn apart) with data-partial-time. Bars,
// table rows and legend items of a dimension carry data-drill (the value a click filters on).
// The body carries data-state="ready", data-refreshes after each complete refresh and
// data-filters (the page's filters, JSON).
(function () {
  'use strict';

  const KEY_STORE = 'lambda.apiKey';
  const REFRESH_STORE = 'lambda.refresh';
  const RANGES = { '6h': 6 * 3600e3, '24h': 24 * 3600e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
  const FILTER_OPS = ['eq', 'neq', 'in', 'not_in', 'prefix', 'contains'];
  const AUTO_GRANULARITY = { '6h': 'minute', '24h': 'hour', '7d': 'hour', '30d': 'day' };
  const PALETTE = ['#2f6fdf', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#0b7285', '#5c940d', '#e67700', '#364fc7', '#495057'];
  const DAY = 86400e3;

  const $ = (id) => document.getElementById(id);
  const state = {
    datasets: [],
    dashboards: [],
    dataset: '',
    dashboard: '',
    range: '', // a key of RANGES, or 'custom' (from, to)
    from: NaN, // ms, custom range only
    to: NaN,
    granularity: 'auto',
    filters: [], // {dimension, op, values}: applied to every panel, on top of its own
    tz: 'utc', // 'utc' or 'local': how times are shown (buckets are the dataset's days and hours)
    refresh: 15,
    timer: 0,
    generation: 0,
    refreshes: 0,
    charts: new Map(), // panel id -> uPlot
    resize: null,
  };

  // ---- API ----------------------------------------------------------------------------------

  class APIError extends Error {
    constructor(status, message, path) {
      super(message);
      this.status = status;
      this.path = path;
    }
    toString() {
      return (this.status ? `HTTP ${this.status}: ` : '') + this.message;
    }
  }

  function apiKey() {
    try { return localStorage.getItem(KEY_STORE) || ''; } catch (e) { return ''; }
  }

  async function api(path, body) {
    const headers = { Accept: 'application/json' };
    const key = apiKey();
    if (key) headers.Authorization = 'Bearer ' + key;
    const opts = { headers, cache: 'no-store' };
    if (body !== undefined) {
      opts.method = 'POST';
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new APIError(0, `cannot reach the server (${path}): ${e.message}`, path);
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!res.ok) {
      let msg = data && (data.error !== undefined ? data.error : data.message);
      if (msg && typeof msg === 'object') msg = msg.message || JSON.stringify(msg);
      if (!msg) msg = text.trim().slice(0, 400) || res.statusText || 'request refused';
      if (data && data.field && !String(msg).includes(data.field)) msg += ` (field ${data.field})`;
      if (res.status === 401) msg += ' (set the API key at the top right)';
      throw new APIError(res.status, `${msg}`, path);
    }
    if (data === null) throw new APIError(res.status, `${path} did not answer JSON`, path);
    return data;
  }

  // apiCSV posts a query for CSV and returns its text with the X-Lambda-* headers.
  async function apiCSV(body) {
    const path = 'api/v1/query?format=csv';
    const headers = { Accept: 'text/csv', 'Content-Type': 'application/json' };
    const key = apiKey();
    if (key) headers.Authorization = 'Bearer ' + key;
    let res;
    try {
      res = await fetch(path, { method: 'POST', headers, cache: 'no-store', body: JSON.stringify(body) });
    } catch (e) {
      throw new APIError(0, `cannot reach the server (${path}): ${e.message}`, path);
    }
    const text = await res.text();
    if (!res.ok) {
      let msg = text.trim().slice(0, 400);
      try { const d = JSON.parse(text); msg = d.error + (d.field ? ` (field ${d.field})` : ''); } catch (e) { /* not JSON */ }
      throw new APIError(res.status, msg || res.statusText, path);
    }
    return {
      text,
      truncated: res.headers.get('X-Lambda-Truncated') === 'true',
      complete: res.headers.get('X-Lambda-Complete') !== 'false',
      exact: res.headers.get('X-Lambda-Exact') === 'true',
    };
  }

  // ---- time and numbers ---------------------------------------------------------------------

  function parseTime(v) {
    if (v === null || v === undefined || v === '') return NaN;
    if (typeof v === 'number') return v > 1e11 ? v : v * 1000;
    const s = String(v);
    if (/^\d{4}-\d{2}-\d{2}$/.test(s)) return Date.parse(s + 'T00:00:00Z');
    if (/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?$/.test(s)) return Date.parse(s.replace(' ', 'T') + 'Z');
    return Date.parse(s);
  }

  function floorTo(ms, granularity) {
    const d = new Date(ms);
    switch (granularity) {
      case 'minute': d.setUTCSeconds(0, 0); break;
      case 'hour': d.setUTCMinutes(0, 0, 0); break;
      case 'day': d.setUTCHours(0, 0, 0, 0); break;
      case 'week': d.setUTCHours(0, 0, 0, 0); d.setUTCDate(d.getUTCDate() - ((d.getUTCDay() + 6) % 7)); break;
      case 'month': d.setUTCHours(0, 0, 0, 0); d.setUTCDate(1); break;
    }
    return d.getTime();
  }

  const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

  // wallClock returns the ISO-like "YYYY-MM-DDTHH:MM:SS" of ms in the page's time zone.
  function wallClock(ms) {
    if (state.tz !== 'local') return new Date(ms).toISOString().slice(0, 19);
    const d = new Date(ms);
    const p = (n, w) => String(n).padStart(w || 2, '0');
    return `${p(d.getFullYear(), 4)}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  // fromWallClock reads a datetime-local value ("YYYY-MM-DDTHH:MM") in the page's time zone.
  function fromWallClock(v) {
    if (!v) return NaN;
    return state.tz === 'local' ? new Date(v).getTime() : Date.parse(v + (v.length === 16 ? ':00' : '') + 'Z');
  }

  function zoneName() {
    if (state.tz !== 'local') return 'UTC';
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time'; } catch (e) { return 'local time'; }
  }

  function fmtTime(ms, withSeconds) {
    if (!isFinite(ms)) return '—';
    const s = wallClock(ms);
    return s.slice(0, 10) + ' ' + s.slice(11, withSeconds ? 19 : 16) + (state.tz === 'local' ? '' : 'Z');
  }

  function fmtDay(ms) {
    return isFinite(ms) ? new Date(ms).toISOString().slice(0, 10) : '—';
  }

  function fmtAgo(ms) {
    if (!isFinite(ms)) return '';
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return 'in the future';
    return fmtDuration(s) + ' ago';
  }

  function fmtDuration(s) {
    s = Math.round(Number(s));
    if (!isFinite(s)) return '—';
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }

  const numFull = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
  const numCompact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

  function fmtNum(v) {
    if (v === null || v === undefined || v === '') return '—';
    const n = Number(v);
    if (!isFinite(n)) return String(v);
    return Math.abs(n) >= 1e7 ? numCompact.format(n) : numFull.format(n);
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'style') e.style.cssText = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // ---- datasets and definitions -------------------------------------------------------------

  const nameOf = (x) => (typeof x === 'string' ? x : (x && (x.name || x.dataset)) || '');

  function normDatasets(data) {
    let list = Array.isArray(data) ? data : data.datasets || data.data || [];
    if (!Array.isArray(list)) list = Object.entries(list).map(([name, v]) => Object.assign({ name }, v));
    return list.map((d) => ({
      name: nameOf(d),
      dimensions: (d.dimensions || []).map(nameOf),
      metrics: (d.metrics || []).map((m) => (typeof m === 'string' ? { name: m } : m)),
      timeZone: d.time_zone || 'UTC', // the zone of the dataset's days, and so of the buckets
    })).filter((d) => d.name);
  }

  // defaultDashboard shows any dataset without a definition: totals, each metric over time,
  // the first metric by each dimension.
  function defaultDashboard(ds) {
    const metrics = ds.metrics.map((m) => m.name);
    const panels = [{ id: 'totals', title: 'Totals over the range', type: 'stat', metrics, width: 12 }];
    metrics.slice(0, 6).forEach((m) => panels.push({ id: 'ts-' + m, title: m, type: 'timeseries', metrics: [m], width: 6 }));
    ds.dimensions.slice(0, 4).forEach((d) => panels.push({ id: 'by-' + d, title: `${metrics[0]} by ${d}`, type: 'bar', metrics: [metrics[0]], dimension: d, limit: 10, width: 6 }));
    return { id: 'default-' + ds.name, title: ds.name, dataset: ds.name, panels, generated: true };
  }

  function dashboardsFor(dataset) {
    const defs = state.dashboards.filter((d) => d.dataset === dataset);
    if (defs.length) return defs;
    const ds = state.datasets.find((d) => d.name === dataset);
    return ds && ds.metrics.length ? [defaultDashboard(ds)] : [];
  }

  function currentDashboard() {
    const list = dashboardsFor(state.dataset);
    return list.find((d) => d.id === state.dashboard) || list[0] || null;
  }

  // ---- URL state ----------------------------------------------------------------------------

  // readHash reads the page's state from the URL fragment: dataset, dashboard, range (a preset
  // or custom with from and to, RFC 3339), granularity, filters (JSON), tz and refresh. What is
  // missing or invalid reads as empty.
  function readHash() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    const h = {
      dataset: p.get('dataset') || '',
      dashboard: p.get('dashboard') || '',
      range: RANGES[p.get('range')] ? p.get('range') : '',
      from: NaN,
      to: NaN,
      granularity: p.get('granularity') || '',
      filters: null,
      tz: p.get('tz') === 'local' ? 'local' : (p.get('tz') === 'utc' ? 'utc' : ''),
      refresh: [0, 5, 15, 60].includes(Number(p.get('refresh'))) && p.get('refresh') !== null ? Number(p.get('refresh')) : null,
    };
    if (p.get('range') === 'custom') {
      const from = parseTime(p.get('from')), to = parseTime(p.get('to'));
      if (isFinite(from) && isFinite(to) && from < to) Object.assign(h, { range: 'custom', from, to });
    }
    if (p.get('filters')) {
      try {
        const f = JSON.parse(p.get('filters'));
        if (Array.isArray(f)) h.filters = f.filter(validFilter).map((x) => ({ dimension: x.dimension, op: x.op, values: x.values.map(String) }));
      } catch (e) { /* a hand-edited URL: no filters */ }
    }
    return h;
  }

  function validFilter(f) {
    return f && typeof f.dimension === 'string' && FILTER_OPS.includes(f.op) && Array.isArray(f.values) && f.values.length > 0;
  }

  // writeHash puts the state in the URL. push adds a history entry (a drill-down or a filter,
  // which Back undoes); otherwise the entry is replaced.
  function writeHash(push) {
    const p = new URLSearchParams();
    if (state.dataset) p.set('dataset', state.dataset);
    if (state.dashboard) p.set('dashboard', state.dashboard);
    p.set('range', state.range);
    if (state.range === 'custom') {
      p.set('from', iso(state.from));
      p.set('to', iso(state.to));
    }
    p.set('granularity', state.granularity);
    if (state.filters.length) p.set('filters', JSON.stringify(state.filters));
    p.set('tz', state.tz);
    p.set('refresh', String(state.refresh));
    const hash = '#' + p.toString();
    if (hash === location.hash) return;
    if (push) history.pushState(null, '', hash);
    else history.replaceState(null, '', hash);
  }

  // applyHash takes the URL's state (after Back, Forward or an edited link) and redraws.
  function applyHash() {
    const h = readHash();
    if (!state.datasets.length) return;
    const dataset = h.dataset && state.datasets.some((d) => d.name === h.dataset) ? h.dataset : state.dataset;
    const structural = dataset !== state.dataset || (h.dashboard && h.dashboard !== state.dashboard);
    state.dataset = dataset;
    if (h.dashboard) state.dashboard = h.dashboard;
    if (h.range) Object.assign(state, { range: h.range, from: h.from, to: h.to });
    if (h.granularity) state.granularity = h.granularity;
    state.filters = h.filters || [];
    if (h.tz) state.tz = h.tz;
    if (h.refresh !== null) state.refresh = h.refresh;
    if (structural) rebuild();
    else { syncControls(); refresh(); }
  }

  // ---- controls -----------------------------------------------------------------------------

  function fillSelect(sel, values, labels) {
    sel.replaceChildren(...values.map((v, i) => el('option', { value: v, text: labels ? labels[i] : v })));
  }

  function syncControls() {
    const ds = $('dataset');
    fillSelect(ds, state.datasets.map((d) => d.name));
    ds.value = state.dataset;
    const list = dashboardsFor(state.dataset);
    fillSelect($('dashboard'), list.map((d) => d.id), list.map((d) => d.title));
    $('dashboard').value = (currentDashboard() || {}).id || '';
    $('dashboard-label').hidden = list.length < 2;
    $('range').value = state.range;
    const custom = state.range === 'custom';
    $('custom-range').hidden = !custom;
    if (custom) {
      $('from').value = wallClock(state.from).slice(0, 16);
      $('to').value = wallClock(state.to).slice(0, 16);
    }
    $('granularity').value = state.granularity;
    $('tz').value = state.tz;
    $('refresh').value = String(state.refresh);
    $('apikey').value = apiKey();
    const d = currentDashboard();
    $('title').textContent = d ? d.title : 'Dashboards';
    document.title = (d ? d.title + ' · ' : '') + 'Lambda dashboards';
    const zoneOf = (state.datasets || []).find((x) => x.name === state.dataset);
    const dsZone = (zoneOf && zoneOf.timeZone) || 'UTC';
    $('zone-note').textContent = state.tz === 'local'
      ? `Times shown in ${zoneName()}; buckets are ${dsZone} hours and days.`
      : (dsZone === 'UTC' ? 'All times UTC.' : `All times UTC; buckets are ${dsZone} days.`);
    syncFilterBar();
  }

  // selectDashboard resets the selectors to the dashboard's defaults unless the URL set them.
  function selectDataset(name, fromHash) {
    state.dataset = name;
    const d = currentDashboard();
    state.dashboard = d ? d.id : '';
    if (!fromHash || !state.range) state.range = (d && d.range) || '24h';
    if (!fromHash || !state.granularity) state.granularity = (d && d.granularity) || 'auto';
    if (!fromHash) state.filters = [];
  }

  function bindControls() {
    $('dataset').addEventListener('change', (e) => {
      state.dashboard = '';
      selectDataset(e.target.value, false);
      rebuild();
    });
    $('dashboard').addEventListener('change', (e) => {
      state.dashboard = e.target.value;
      const d = currentDashboard();
      state.range = (d && d.range) || state.range;
      state.granularity = (d && d.granularity) || state.granularity;
      rebuild();
    });
    $('range').addEventListener('change', (e) => {
      if (e.target.value === 'custom') {
        // Start from the window shown now, to the minute.
        const now = Date.now();
        const span = RANGES[state.range] || (state.to - state.from) || RANGES['24h'];
        state.to = floorTo(now, 'minute') + 60e3;
        state.from = floorTo(state.to - span, 'minute');
      }
      state.range = e.target.value;
      syncControls();
      writeHash(true);
      refresh();
    });
    $('apply-range').addEventListener('click', () => {
      const from = fromWallClock($('from').value), to = fromWallClock($('to').value);
      if (!isFinite(from) || !isFinite(to) || from >= to) {
        banner('The custom range needs a start before its end.');
        return;
      }
      banner('');
      Object.assign(state, { range: 'custom', from, to });
      writeHash(true);
      refresh();
    });
    $('granularity').addEventListener('change', (e) => { state.granularity = e.target.value; writeHash(); refresh(); });
    $('tz').addEventListener('change', (e) => { state.tz = e.target.value; writeHash(); rebuild(); });
    $('refresh').addEventListener('change', (e) => {
      state.refresh = Number(e.target.value);
      try { localStorage.setItem(REFRESH_STORE, String(state.refresh)); } catch (err) { /* private mode */ }
      writeHash();
      schedule();
    });
    bindFilterBar();
    $('reload').addEventListener('click', () => refresh());
    $('apikey').addEventListener('change', (e) => {
      try {
        if (e.target.value) localStorage.setItem(KEY_STORE, e.target.value);
        else localStorage.removeItem(KEY_STORE);
      } catch (err) { /* private mode: the key lives for this page only */ }
      start();
    });
    $('controls').addEventListener('submit', (e) => e.preventDefault());
    document.addEventListener('visibilitychange', () => { if (!document.hidden && state.refresh) refresh(); });
    window.addEventListener('hashchange', applyHash);
    window.addEventListener('popstate', applyHash);
  }

  // ---- filters ------------------------------------------------------------------------------

  // addFilter restricts every panel to one more value of a dimension: a value joins an
  // existing eq or in filter of the dimension, otherwise a new eq filter is added.
  function addFilter(dimension, value) {
    const f = state.filters.find((x) => x.dimension === dimension && (x.op === 'eq' || x.op === 'in'));
    if (f && f.values.includes(value)) return;
    if (f) { f.op = 'in'; f.values.push(value); } else state.filters.push({ dimension, op: 'eq', values: [value] });
    writeHash(true);
    syncFilterBar();
    refresh();
  }

  function removeFilter(i) {
    state.filters.splice(i, 1);
    writeHash(true);
    syncFilterBar();
    refresh();
  }

  // drillable says whether clicking a value of dimension filters on it: not when the page
  // already restricts the dimension to that one value.
  function drillable(dimension) {
    return !state.filters.some((f) => f.dimension === dimension && f.op === 'eq');
  }

  function currentDataset() {
    return state.datasets.find((d) => d.name === state.dataset) || { dimensions: [] };
  }

  function syncFilterBar() {
    const chips = state.filters.map((f, i) => el('span', { class: 'chip', 'data-filter': f.dimension },
      el('span', { text: `${f.dimension} ${opLabel(f.op)} ${f.values.map((v) => v === '' ? '(empty)' : v).join(', ')}` }),
      el('button', { type: 'button', class: 'chip-x', title: 'remove this filter', 'aria-label': `remove filter on ${f.dimension}`, 'data-remove': String(i) }, '×')));
    $('filter-chips').replaceChildren(...chips);
    const dims = currentDataset().dimensions;
    const sel = $('filter-dim');
    const keep = sel.value;
    fillSelect(sel, dims);
    if (dims.includes(keep)) sel.value = keep;
    $('filter-clear').hidden = state.filters.length === 0;
    document.body.dataset.filters = JSON.stringify(state.filters);
  }

  function opLabel(op) {
    return { eq: '=', neq: '≠', in: 'in', not_in: 'not in', prefix: 'starts with', contains: 'contains' }[op] || op;
  }

  let valuesTimer = 0;
  let valuesSeq = 0;

  // suggestValues fills the value picker from GET api/v1/values: the dimension's most frequent
  // values over the page's range starting with what was typed.
  async function suggestValues() {
    const dim = $('filter-dim').value;
    if (!dim) return;
    const seq = ++valuesSeq;
    const w = pageWindow(Date.now());
    const q = new URLSearchParams({ dataset: state.dataset, dimension: dim, limit: '50', from: iso(w.from), to: iso(w.to) });
    const prefix = $('filter-value').value;
    if (prefix) q.set('prefix', prefix);
    let data;
    try {
      data = await api('api/v1/values?' + q.toString());
    } catch (e) {
      if (seq === valuesSeq) $('filter-values').replaceChildren();
      return;
    }
    if (seq !== valuesSeq) return;
    const list = (data && data.values) || [];
    $('filter-values').replaceChildren(...list.map((v) => el('option', { value: v.value, label: v.count === null || v.count === undefined ? v.value : `${v.value || '(empty)'} · ${fmtNum(v.count)}` })));
    $('filter-bar').dataset.suggestions = String(list.length);
  }

  function bindFilterBar() {
    $('filter-chips').addEventListener('click', (e) => {
      const b = e.target.closest('[data-remove]');
      if (b) removeFilter(Number(b.dataset.remove));
    });
    $('filter-clear').addEventListener('click', () => {
      state.filters = [];
      writeHash(true);
      syncFilterBar();
      refresh();
    });
    const later = () => { clearTimeout(valuesTimer); valuesTimer = setTimeout(suggestValues, 200); };
    $('filter-value').addEventListener('input', later);
    $('filter-value').addEventListener('focus', later);
    $('filter-dim').addEventListener('change', () => { $('filter-value').value = ''; later(); });
    const add = () => {
      const dim = $('filter-dim').value, v = $('filter-value').value, op = $('filter-op').value;
      if (!dim || (v === '' && op !== 'eq')) return;
      if (op === 'eq') addFilter(dim, v);
      else {
        state.filters.push({ dimension: dim, op, values: [v] });
        writeHash(true);
        syncFilterBar();
        refresh();
      }
      $('filter-value').value = '';
    };
    $('filter-add').addEventListener('click', add);
    $('filter-value').addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); add(); } });
  }

  function banner(msg) {
    const b = $('banner');
    b.hidden = !msg;
    b.textContent = msg || '';
  }

  // ---- start, rebuild, refresh --------------------------------------------------------------

  async function start() {
    const gen = ++state.generation;
    document.body.dataset.state = 'loading';
    banner('');
    let datasets, defs;
    try {
      [datasets, defs] = await Promise.all([
        api('api/v1/datasets'),
        api('dashboards.json').catch((e) => { banner(`Dashboard definitions: ${e}`); return { dashboards: [] }; }),
      ]);
    } catch (e) {
      if (gen !== state.generation) return;
      banner(`Cannot load datasets: ${e}`);
      document.body.dataset.state = 'error';
      if (e.status === 401) $('apikey').focus();
      schedule(start);
      return;
    }
    if (gen !== state.generation) return;
    state.datasets = normDatasets(datasets);
    state.dashboards = (defs && defs.dashboards) || [];
    if (!state.datasets.length) {
      banner('The server declares no datasets.');
      document.body.dataset.state = 'error';
      return;
    }
    const h = readHash();
    const want = state.dataset || h.dataset;
    let name = want;
    if (!state.datasets.some((d) => d.name === name)) {
      const def = state.dashboards.find((d) => state.datasets.some((s) => s.name === d.dataset));
      name = def ? def.dataset : state.datasets[0].name;
    }
    state.dashboard = state.dashboard || h.dashboard;
    if (!state.range && h.range) Object.assign(state, { range: h.range, from: h.from, to: h.to });
    state.granularity = h.granularity || state.granularity;
    if (h.filters && (!h.dataset || name === h.dataset)) state.filters = h.filters;
    if (h.tz) state.tz = h.tz;
    if (h.refresh !== null) state.refresh = h.refresh;
    selectDataset(name, true);
    if (!dashboardsFor(name).some((d) => d.id === state.dashboard)) state.dashboard = (currentDashboard() || {}).id || '';
    rebuild();
  }

  function rebuild() {
    for (const u of state.charts.values()) u.destroy();
    state.charts.clear();
    syncControls();
    writeHash();
    const d = currentDashboard();
    const grid = $('panels');
    grid.replaceChildren();
    if (!d) {
      grid.append(el('p', { class: 'empty', text: `No panels for dataset ${state.dataset}.` }));
      return;
    }
    for (const p of d.panels) {
      const width = p.width || (p.type === 'stat' ? 12 : 6);
      grid.append(el('section', {
        class: 'panel', 'data-panel': p.id, 'data-panel-type': p.type, 'data-state': 'loading',
        style: `grid-column: span ${width}`,
      },
      el('div', { class: 'panel-head' }, el('h2', { text: p.title || p.id }), el('span', { class: 'info' }), el('span', { class: 'badges' }),
        el('button', { type: 'button', class: 'export', 'data-export': p.id, title: 'download this panel\'s data as CSV' }, 'CSV')),
      el('div', { class: 'panel-body' }),
      el('div', { class: 'panel-foot' })));
    }
    grid.onclick = (e) => {
      const x = e.target.closest('[data-export]');
      if (x) { exportPanel(d.panels.find((p) => p.id === x.dataset.export)); return; }
      const drill = e.target.closest('[data-drill]');
      const node = e.target.closest('[data-panel]');
      if (!drill || !node) return;
      const p = d.panels.find((q) => q.id === node.dataset.panel);
      if (p && p.dimension && drillable(p.dimension)) addFilter(p.dimension, drill.dataset.drill);
    };
    refresh();
  }

  function schedule(fn) {
    clearTimeout(state.timer);
    if (state.refresh > 0) state.timer = setTimeout(fn || refresh, state.refresh * 1000);
  }

  async function refresh() {
    clearTimeout(state.timer);
    const gen = state.generation;
    const d = currentDashboard();
    if (!d) return;
    document.body.dataset.state = document.body.dataset.state === 'ready' ? 'refreshing' : 'loading';
    const now = Date.now();
    const jobs = d.panels.map((p) => loadPanel(p, now, gen));
    jobs.push(loadFreshness(gen));
    await Promise.allSettled(jobs);
    if (gen !== state.generation) return;
    state.refreshes++;
    document.body.dataset.refreshes = String(state.refreshes);
    document.body.dataset.state = 'ready';
    const errors = document.querySelectorAll('.panel[data-state="error"]').length;
    $('status').textContent = `Updated ${fmtTime(now, true)}` +
      (state.refresh ? ` · refreshing every ${state.refresh} s` : ' · auto refresh off') +
      (errors ? ` · ${errors} panel${errors > 1 ? 's' : ''} failed` : '');
    schedule();
  }

  // ---- panels -------------------------------------------------------------------------------

  // pageWindow is the page's range: the custom one, or the preset's up to the next minute.
  function pageWindow(now) {
    if (state.range === 'custom') return { from: state.from, to: state.to };
    const to = floorTo(now, 'minute') + 60e3;
    return { from: to - RANGES[state.range || '24h'], to };
  }

  // autoGranularity picks the bucket of a custom range: about 50 to 1,500 points.
  function autoGranularity(span) {
    if (span <= 6 * 3600e3) return 'minute';
    if (span <= 10 * DAY) return 'hour';
    if (span <= 400 * DAY) return 'day';
    return 'week';
  }

  // panelWindow is what a panel shows. A preset applies to panels without a range of their
  // own; a custom range applies to every panel (the user chose that window). A panel's own
  // granularity always holds.
  function panelWindow(p, now) {
    if (state.range === 'custom') {
      const granularity = p.granularity || (state.granularity === 'auto' || !state.granularity ? autoGranularity(state.to - state.from) : state.granularity);
      return { range: 'custom', granularity, from: floorTo(state.from, granularity), to: state.to };
    }
    const range = p.range || state.range || '24h';
    const granularity = p.granularity || (state.granularity === 'auto' || !state.granularity ? AUTO_GRANULARITY[range] : state.granularity);
    const to = floorTo(now, 'minute') + 60e3;
    const from = floorTo(now - RANGES[range], granularity);
    return { range, granularity, from, to };
  }

  // panelFilters are the panel's own filters and the page's.
  function panelFilters(p) {
    return (p.filters || []).concat(state.filters);
  }

  function rangeLabel(w) {
    return w.range === 'custom' ? `${fmtTime(w.from)} → ${fmtTime(w.to)}` : w.range;
  }

  function panelRequest(p, w) {
    const timeChart = p.type === 'timeseries' || (p.type === 'table' && !p.dimension);
    const req = {
      dataset: state.dataset,
      metrics: p.metrics,
      dimensions: p.dimension ? [p.dimension] : [],
      from: iso(w.from),
      to: iso(w.to),
      granularity: timeChart ? w.granularity : 'all',
    };
    const filters = panelFilters(p);
    if (filters.length) req.filters = filters;
    if (p.exact) req.exact = true;
    return req;
  }

  async function loadPanel(p, now, gen) {
    const node = document.querySelector(`.panel[data-panel="${CSS.escape(p.id)}"]`);
    if (!node) return;
    const w = panelWindow(p, now);
    const req = panelRequest(p, w);
    const info = node.querySelector('.info');
    info.textContent = `${rangeLabel(w)} · ${req.granularity === 'all' ? 'whole range' : 'by ' + req.granularity}` +
      (p.filters && p.filters.length ? ' · ' + p.filters.map((f) => `${f.dimension} ${opLabel(f.op)} ${f.values.join(',')}`).join(' · ') : '');
    node.dataset.filters = JSON.stringify(req.filters || []);
    let res;
    try {
      res = await api('api/v1/query', req);
    } catch (e) {
      if (gen !== state.generation) return;
      showPanelError(node, p, e);
      return;
    }
    if (gen !== state.generation) return;
    try {
      renderPanel(node, p, w, req, res);
    } catch (e) {
      showPanelError(node, p, new APIError(0, 'cannot draw the answer: ' + e.message, 'api/v1/query'));
      console.error(e);
    }
  }

  // exportPanel downloads what the panel shows as CSV (the same query, format=csv), and says
  // on the panel when the file was cut at serving.max_rows or the range is incomplete.
  async function exportPanel(p) {
    if (!p) return;
    const node = document.querySelector(`.panel[data-panel="${CSS.escape(p.id)}"]`);
    const w = panelWindow(p, Date.now());
    const req = panelRequest(p, w);
    node.dataset.exportState = 'loading';
    const foot = node.querySelector('.panel-foot');
    let r;
    try {
      r = await apiCSV(req);
    } catch (e) {
      node.dataset.exportState = 'error';
      node.dataset.exportError = String(e);
      foot.textContent = `CSV export failed: ${e}`;
      return;
    }
    const name = `${state.dataset}-${p.id}-${iso(w.from).replace(/[:]/g, '')}.csv`;
    const url = URL.createObjectURL(new Blob([r.text], { type: 'text/csv' }));
    const a = el('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60e3);
    node.dataset.exportRows = String(Math.max(0, csvRecords(r.text) - 1));
    node.dataset.exportTruncated = String(r.truncated);
    node.dataset.exportState = 'ok';
    const notes = [];
    if (r.truncated) notes.push(`the CSV holds the first ${node.dataset.exportRows} rows only (serving.max_rows): narrow the range or add filters`);
    if (!r.complete) notes.push('part of the range has no data source');
    if (notes.length) foot.textContent = 'CSV export: ' + notes.join('; ');
  }

  // csvRecords counts the records of a CSV text (newlines inside quotes do not end one).
  function csvRecords(text) {
    let n = 0, quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c === '"') quoted = !quoted;
      else if (c === '\n' && !quoted) n++;
    }
    return text.length && text[text.length - 1] !== '\n' ? n + 1 : n;
  }

  function showPanelError(node, p, e) {
    const u = state.charts.get(p.id);
    if (u) { u.destroy(); state.charts.delete(p.id); }
    node.dataset.state = 'error';
    node.dataset.points = '0';
    node.dataset.error = String(e);
    node.querySelector('.panel-body').replaceChildren(el('div', { class: 'panel-error', text: String(e) }));
    node.querySelector('.badges').replaceChildren();
    node.querySelector('.panel-foot').textContent = '';
  }

  function renderPanel(node, p, w, req, res) {
    const rows = Array.isArray(res.rows) ? res.rows : [];
    const meta = res.meta || {};
    delete node.dataset.error;
    const body = node.querySelector('.panel-body');
    let points;
    if (p.type === 'timeseries') points = renderTimeseries(node, body, p, w, rows, meta);
    else {
      const u = state.charts.get(p.id);
      if (u) { u.destroy(); state.charts.delete(p.id); }
      if (p.type === 'bar') points = renderBars(body, p, rows);
      else if (p.type === 'table') points = renderTable(body, p, rows);
      else points = renderStat(body, p, rows);
    }
    const exact = rows.filter((r) => r.exact !== false).length;
    node.dataset.points = String(points);
    node.dataset.exactPoints = String(exact);
    node.dataset.approxPoints = String(rows.length - exact);
    const sources = [...new Set(rows.map((r) => r.source).filter(Boolean))].sort();
    node.dataset.sources = sources.join(',');
    node.dataset.state = points > 0 ? 'ok' : 'empty';
    if (!points) body.replaceChildren(el('p', { class: 'empty', text: 'No data in this range.' }));

    const badges = sources.map((s) => el('span', { class: 'badge ' + (s === 'batch' || s === 'raw' ? 'exact' : 'approx'), text: s, title: `rows from ${s}` }));
    if (rows.length && exact === rows.length) badges.push(el('span', { class: 'badge exact', text: 'exact' }));
    else if (rows.length) badges.push(el('span', { class: 'badge approx', text: exact ? `${rows.length - exact} of ${rows.length} approximate` : 'approximate' }));
    if (meta.complete === false) badges.push(el('span', { class: 'badge warn', text: 'incomplete', title: 'part of the range has no data source' }));
    node.querySelector('.badges').replaceChildren(...badges);

    const foot = [];
    const bw = boundaryOf(meta);
    if (bw !== null) foot.push(`exact through ${fmtDay(bw - DAY)}`);
    if (meta.speed_watermark) foot.push(`speed up to ${fmtTime(parseTime(meta.speed_watermark), true)}`);
    if (meta.lag_seconds !== undefined && meta.lag_seconds !== null) foot.push(`lag ${fmtDuration(meta.lag_seconds)}`);
    if (meta.took_ms !== undefined) foot.push(`${meta.took_ms} ms`);
    const footNode = node.querySelector('.panel-foot');
    footNode.textContent = foot.join(' · ');
    footNode.title = Array.isArray(meta.sources) && meta.sources.length ? 'sources: ' + meta.sources.map(describeSource).join('; ') : '';
  }

  function describeSource(s) {
    if (typeof s !== 'object' || s === null) return String(s);
    const name = s.source || s.name || s.table || '';
    const from = s.from ? fmtTime(parseTime(s.from)) : '';
    const to = s.to ? fmtTime(parseTime(s.to)) : '';
    return name + (from || to ? ` ${from} → ${to}` : '');
  }

  // boundaryOf returns the end of the batch watermark day (ms), where exact data ends, or null
  // when no day is exact yet. The watermark is the last exact day, as a date or a timestamp of
  // that day; meta.batch_boundary, when the server sends it, is the boundary itself.
  function boundaryOf(meta) {
    if (meta.batch_boundary) {
      const b = parseTime(meta.batch_boundary);
      return isFinite(b) ? b : null;
    }
    const wm = meta.batch_watermark;
    if (wm === null || wm === undefined || wm === '') return null;
    const t = parseTime(wm);
    if (!isFinite(t) || t <= 0) return null;
    return floorTo(t, 'day') + DAY;
  }

  function metricValue(row, m) {
    const v = row[m];
    if (v === null || v === undefined || v === '') return null;
    const n = Number(v);
    return isFinite(n) ? n : null;
  }

  // seriesOf returns one series per metric, or with a dimension one per dimension value (the
  // largest few) of the first metric.
  function seriesOf(p, rows) {
    if (!p.dimension) return p.metrics.map((m) => ({ label: m, metric: m, match: () => true }));
    const m = p.metrics[0];
    const totals = new Map();
    for (const r of rows) {
      const k = String(r[p.dimension] ?? '');
      totals.set(k, (totals.get(k) || 0) + (metricValue(r, m) || 0));
    }
    return [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, p.limit || 5)
      .map(([k]) => ({ label: `${k || '(empty)'}`, value: k, metric: m, match: (r) => String(r[p.dimension] ?? '') === k }));
  }

  // bucketEnd is the start of the bucket after the one starting at ms.
  function bucketEnd(ms, granularity) {
    const d = new Date(ms);
    switch (granularity) {
      case 'month': return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
      case 'week': return ms + 7 * DAY;
      default: return ms + (bucketMs(granularity) || 0);
    }
  }

  // partialBucket returns the start of the chart's last bucket when it is not complete (it
  // holds now, or the range ends inside it), else null: its value is still growing and must
  // not read as a drop.
  function partialBucket(w, now) {
    const end = Math.min(now, w.to);
    const start = floorTo(end - 1, w.granularity);
    return bucketEnd(start, w.granularity) > end ? start : null;
  }

  function renderTimeseries(node, body, p, w, rows, meta) {
    const times = [...new Set(rows.map((r) => parseTime(r.time)).filter(isFinite))].sort((a, b) => a - b);
    const at = new Map(times.map((t, i) => [t, i]));
    const series = seriesOf(p, rows);
    const data = [times.map((t) => t / 1000)];
    const uSeries = [{}];
    const metricsShown = [...new Set(series.map((s) => s.metric))];
    const partial = partialBucket(w, Date.now());
    const partialIdx = partial === null ? undefined : at.get(partial);
    const drill = p.dimension && drillable(p.dimension);
    let points = 0;
    series.forEach((s, si) => {
      const exact = new Array(times.length).fill(null);
      const approx = new Array(times.length).fill(null);
      const part = new Array(times.length).fill(null);
      for (const r of rows) {
        if (!s.match(r)) continue;
        const i = at.get(parseTime(r.time));
        const v = metricValue(r, s.metric);
        if (i === undefined || v === null) continue;
        points++;
        if (i === partialIdx) part[i] = v;
        else if (r.exact === false) approx[i] = v;
        else exact[i] = v;
      }
      // Join the two styles so the line does not break where exact turns approximate.
      for (let i = 1; i < times.length; i++) {
        if (approx[i] !== null && approx[i - 1] === null && exact[i - 1] !== null) approx[i - 1] = exact[i - 1];
        if (exact[i] !== null && approx[i] === null && approx[i - 1] !== null && exact[i - 1] === null) approx[i] = exact[i];
      }
      const color = PALETTE[si % PALETTE.length];
      const scale = p.dimension ? metricsShown[0] : s.metric;
      const pts = { show: times.length <= 48, size: 4 };
      data.push(exact, approx, part);
      uSeries.push({ label: s.label, scale, stroke: color, width: 1.6, points: pts, spanGaps: false },
        { label: s.label + ' (approximate)', scale, stroke: color, width: 1.6, dash: [6, 4], points: pts, spanGaps: false },
        // The bucket still filling: a hollow point, no line to it.
        { label: s.label + ' (partial)', scale, stroke: color, width: 0, paths: () => null, points: { show: true, size: 8, width: 2, stroke: color, fill: '#fff' } });
      s.color = color;
    });

    const boundary = boundaryOf(meta);
    const inside = boundary !== null && boundary > w.from && boundary <= w.to;
    node.dataset.boundary = inside ? '1' : '0';
    if (boundary !== null) node.dataset.boundaryTime = iso(boundary); else delete node.dataset.boundaryTime;
    node.dataset.partial = partialIdx === undefined ? '0' : '1';
    if (partialIdx !== undefined) node.dataset.partialTime = iso(partial); else delete node.dataset.partialTime;

    const old = state.charts.get(p.id);
    if (old) { old.destroy(); state.charts.delete(p.id); }
    if (!points) return 0;

    const legend = el('div', { class: 'legend' }, series.map((s) => el('span', {
      class: 'item' + (drill ? ' drill' : ''), 'data-drill': drill ? s.value : undefined, title: drill ? 'click to filter on it' : undefined,
    }, el('span', { class: 'line', style: `border-color:${s.color}` }), s.label, el('span', { class: 'val' }))));
    if (partialIdx !== undefined) legend.append(el('span', { class: 'item partial-key', title: 'the current bucket is still filling: its value will grow' }, el('span', { class: 'dot' }), 'partial bucket'));
    const readout = el('div', { class: 'readout' });
    const chartBox = el('div', { class: 'chart' + (drill ? ' drill' : '') });
    body.replaceChildren(chartBox, legend, readout);

    const axes = [{ stroke: '#68707c', grid: { stroke: '#eef0f3' }, ticks: { stroke: '#dde1e6' }, values: timeLabels }];
    metricsShown.slice(0, 2).forEach((m, i) => axes.push({
      scale: m, side: i === 0 ? 3 : 1, stroke: '#68707c', size: 56,
      grid: { show: i === 0, stroke: '#eef0f3' }, ticks: { stroke: '#dde1e6' },
      values: (u, vals) => vals.map((v) => (v === null ? '' : numCompact.format(v))),
      label: metricsShown.length > 1 ? m : undefined, labelSize: metricsShown.length > 1 ? 18 : undefined,
    }));
    // The x range is the requested window, widened to the end of the last bucket so a day
    // bucket after the boundary gets its width.
    const lastEnd = times.length ? bucketEnd(times[times.length - 1], w.granularity) : w.to;
    const xRange = [w.from / 1000, Math.max(w.to, lastEnd) / 1000];
    const scales = { x: { time: true, range: () => xRange } };
    for (const m of metricsShown) scales[m] = { auto: true, range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.08 : 1] };

    const width = Math.max(200, chartBox.clientWidth || body.clientWidth || 400);
    let focused = null;
    const opts = {
      width, height: 220,
      tzDate: (ts) => (state.tz === 'local' ? new Date(ts * 1e3) : uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC')),
      legend: { show: false },
      cursor: { drag: { x: true, y: false }, focus: { prox: 24 } },
      focus: { alpha: 0.4 },
      scales, axes, series: uSeries,
      hooks: {
        drawClear: [(u) => drawApproxRegion(u, boundary)],
        draw: [(u) => { drawBoundaryLine(u, boundary, inside); drawPartial(u, partialIdx === undefined ? null : partial, w); }],
        setCursor: [(u) => showReadout(u, series, legend, readout, partialIdx)],
        setSeries: [(u, idx, o) => { if (o && o.focus !== undefined) focused = o.focus ? idx : null; }],
      },
    };
    const u = new uPlot(opts, data, chartBox);
    if (drill) {
      // A click on the chart filters on the series nearest the cursor (not after a zoom drag).
      u.over.addEventListener('click', () => {
        if (focused === null || focused === undefined || u.select.width > 2) return;
        const s = series[Math.floor((focused - 1) / 3)];
        if (s) addFilter(p.dimension, s.value);
      });
    }
    state.charts.set(p.id, u);
    showReadout(u, series, legend, readout, partialIdx);
    return points;
  }

  // drawPartial marks the bucket still filling: a hatched band labelled "partial".
  function drawPartial(u, start, w) {
    if (start === null) return;
    const { left, top, width, height } = u.bbox;
    const x0 = Math.max(left, Math.round(u.valToPos(start / 1000, 'x', true)));
    const x1 = Math.min(left + width, Math.round(u.valToPos(bucketEnd(start, w.granularity) / 1000, 'x', true)));
    if (!(x1 > x0)) return;
    const ctx = u.ctx;
    const dpr = devicePixelRatio;
    ctx.save();
    ctx.fillStyle = 'rgba(104, 112, 124, 0.10)';
    ctx.fillRect(x0, top, x1 - x0, height);
    ctx.strokeStyle = 'rgba(104, 112, 124, 0.6)';
    ctx.lineWidth = dpr;
    ctx.setLineDash([3 * dpr, 3 * dpr]);
    ctx.beginPath();
    ctx.moveTo(x0, top);
    ctx.lineTo(x0, top + height);
    ctx.stroke();
    ctx.font = `${10 * dpr}px system-ui, sans-serif`;
    ctx.fillStyle = '#68707c';
    ctx.textBaseline = 'bottom';
    ctx.textAlign = 'right';
    ctx.fillText('partial', x1 - 2 * dpr, top + height - 2 * dpr);
    ctx.restore();
  }

  // drawApproxRegion shades the part of the plot after the batch boundary (all of it when no
  // day is exact yet) under the series.
  function drawApproxRegion(u, boundary) {
    const { left, top, width, height } = u.bbox;
    let x0 = left;
    if (boundary !== null) {
      x0 = Math.round(u.valToPos(boundary / 1000, 'x', true));
      if (!isFinite(x0) || x0 >= left + width) return;
      x0 = Math.max(x0, left);
    }
    const ctx = u.ctx;
    ctx.save();
    ctx.beginPath();
    ctx.rect(x0, top, left + width - x0, height);
    ctx.clip();
    ctx.fillStyle = 'rgba(224, 138, 0, 0.08)';
    ctx.fillRect(x0, top, left + width - x0, height);
    ctx.strokeStyle = 'rgba(224, 138, 0, 0.22)';
    ctx.lineWidth = 1;
    ctx.setLineDash([]); // uPlot leaves the last dashed series' pattern on the context
    const step = 10 * devicePixelRatio;
    ctx.beginPath();
    for (let x = x0 - height; x < left + width; x += step) {
      ctx.moveTo(x, top + height);
      ctx.lineTo(x + height, top);
    }
    ctx.stroke();
    ctx.restore();
  }

  function drawBoundaryLine(u, boundary, inside) {
    if (!inside) return;
    const { top, height } = u.bbox;
    const x = Math.round(u.valToPos(boundary / 1000, 'x', true));
    const ctx = u.ctx;
    const dpr = devicePixelRatio;
    ctx.save();
    ctx.strokeStyle = '#e08a00';
    ctx.lineWidth = 2 * dpr;
    ctx.setLineDash([]);
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + height);
    ctx.stroke();
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.fillStyle = '#b86e00';
    ctx.textBaseline = 'top';
    ctx.textAlign = 'right';
    ctx.fillText('exact ', x - 3 * dpr, top + 3 * dpr);
    ctx.textAlign = 'left';
    if (x + ctx.measureText(' approximate').width + 3 * dpr < u.bbox.left + u.bbox.width) ctx.fillText(' approximate', x + 3 * dpr, top + 3 * dpr);
    ctx.restore();
  }

  function bucketMs(granularity) {
    return { minute: 60e3, hour: 3600e3, day: DAY, week: 7 * DAY, month: 30 * DAY }[granularity] || 0;
  }

  // timeLabels formats x ticks in the page's zone, 24-hour, with the date under midnight and
  // the first tick.
  function timeLabels(u, splits, axisIdx, space, incr) {
    return splits.map((v, i) => {
      const s = wallClock(v * 1000);
      if (incr >= 86400) return s.slice(5, 10);
      const hm = s.slice(11, 16);
      return hm === '00:00' || i === 0 ? hm + '\n' + s.slice(5, 10) : hm;
    });
  }

  function showReadout(u, series, legend, readout, partialIdx) {
    let i = u.cursor.idx;
    const n = u.data[0].length;
    if (i === null || i === undefined) i = n - 1;
    if (i < 0) return;
    const vals = legend.querySelectorAll('.val');
    let approx = false;
    series.forEach((s, si) => {
      const e = u.data[1 + 3 * si][i];
      const a = u.data[2 + 3 * si][i];
      const pt = u.data[3 + 3 * si][i];
      const v = e !== null && e !== undefined ? e : (a !== null && a !== undefined ? a : pt);
      if ((e === null || e === undefined) && a !== null && a !== undefined) approx = true;
      vals[si].textContent = v === null || v === undefined ? '—' : ((e === null || e === undefined) ? '≈' : '') + fmtNum(v);
    });
    readout.textContent = `${fmtTime(u.data[0][i] * 1000)}${i === partialIdx ? ' · partial: still filling' : ''}${approx ? ' · approximate' : ''}` +
      (u.cursor.idx === null || u.cursor.idx === undefined ? ' (latest; hover for others, drag to zoom, double-click to reset)' : '');
  }

  function renderBars(body, p, rows) {
    const m = p.metrics[0];
    const items = rows.map((r) => ({ label: String(r[p.dimension] ?? ''), v: metricValue(r, m), exact: r.exact !== false, source: r.source }))
      .filter((x) => x.v !== null).sort((a, b) => b.v - a.v).slice(0, p.limit || 20);
    const max = Math.max(0, ...items.map((x) => x.v)) || 1;
    const drill = drillable(p.dimension);
    body.replaceChildren(el('div', { class: 'bars' }, items.map((x) => el('div', {
      class: 'bar-row' + (drill ? ' drill' : ''), 'data-exact': String(x.exact), 'data-drill': drill ? x.label : undefined,
      title: `${x.label || '(empty)'}: ${fmtNum(x.v)} (${x.exact ? 'exact' : 'approximate'}, ${x.source || '?'})${drill ? ' · click to filter on it' : ''}`,
    },
    el('span', { class: 'bar-label', text: x.label || '(empty)' }),
    el('span', { class: 'bar-track' }, el('span', { class: 'bar-fill', style: `width:${Math.max(0.5, (100 * x.v) / max).toFixed(2)}%` })),
    el('span', { class: 'bar-value' + (x.exact ? '' : ' approx'), text: (x.exact ? '' : '≈') + fmtNum(x.v) })))));
    return items.length;
  }

  function renderTable(body, p, rows) {
    let items = rows.slice();
    const key = p.dimension || 'time';
    if (p.dimension) items.sort((a, b) => (metricValue(b, p.metrics[0]) || 0) - (metricValue(a, p.metrics[0]) || 0));
    else items.sort((a, b) => parseTime(b.time) - parseTime(a.time));
    items = items.slice(0, p.limit || 50);
    const head = el('tr', {}, el('th', { text: key }), p.metrics.map((m) => el('th', { text: m })), el('th', { text: 'source' }));
    const drill = p.dimension && drillable(p.dimension);
    const trs = items.map((r) => el('tr', { 'data-exact': String(r.exact !== false), class: drill ? 'drill' : '', 'data-drill': drill ? String(r[p.dimension] ?? '') : undefined, title: drill ? 'click to filter on it' : undefined },
      el('td', { text: p.dimension ? (String(r[p.dimension] ?? '') || '(empty)') : fmtTime(parseTime(r.time)) }),
      p.metrics.map((m) => el('td', { class: r.exact === false ? 'approx' : '', text: (r.exact === false ? '≈' : '') + fmtNum(r[m]) })),
      el('td', { text: (r.source || '') + (r.exact === false ? ' ≈' : '') })));
    body.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data' }, el('thead', {}, head), el('tbody', {}, trs))));
    return items.length;
  }

  function renderStat(body, p, rows) {
    const r = rows[0];
    if (!r) return 0;
    body.replaceChildren(el('div', { class: 'stats' }, p.metrics.map((m) => el('div', { class: 'stat', 'data-metric': m, 'data-exact': String(r.exact !== false) },
      el('div', { class: 'label', text: m }),
      el('div', { class: 'value', text: (r.exact === false ? '≈' : '') + fmtNum(r[m]) }),
      el('div', { class: 'sub', text: `${r.exact === false ? 'approximate' : 'exact'} · ${r.source || ''}` })))));
    return p.metrics.filter((m) => r[m] !== undefined).length;
  }

  // ---- freshness ----------------------------------------------------------------------------

  // freshnessOf finds the entry of one dataset in /api/v1/freshness, whether it lists
  // datasets in an array, a map by name or answers for one dataset.
  function freshnessOf(data, ds) {
    let list = data && (data.datasets !== undefined ? data.datasets : data);
    if (Array.isArray(list)) return list.find((x) => nameOf(x) === ds) || (list.length === 1 ? list[0] : null);
    if (list && typeof list === 'object') {
      if (list[ds] && typeof list[ds] === 'object') return list[ds];
      return list;
    }
    return null;
  }

  // flatten turns nested objects into dotted keys; arrays stay whole.
  function flatten(o, prefix, out) {
    out = out || {};
    for (const [k, v] of Object.entries(o || {})) {
      const key = prefix ? prefix + '.' + k : k;
      if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = v;
    }
    return out;
  }

  function pick(flat, re, used) {
    for (const k of Object.keys(flat)) {
      if (!used.has(k) && re.test(k)) { used.add(k); return [k, flat[k]]; }
    }
    return [null, undefined];
  }

  function tile(label, value, sub, cls) {
    return el('div', { class: 'fresh-tile ' + (cls || '') }, el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }), sub ? el('div', { class: 'sub', text: sub }) : null);
  }

  function cell(k, v) {
    if (v === null || v === undefined) return '—';
    if (typeof v === 'object') return JSON.stringify(v);
    if (typeof v === 'number' && /rel/.test(k)) return (100 * v).toFixed(2) + ' %';
    if (typeof v === 'number') return fmtNum(v);
    if (typeof v === 'string' && /^\d{4}-\d{2}-\d{2}T/.test(v)) return fmtTime(parseTime(v), true);
    return String(v);
  }

  function objTable(title, list, max) {
    if (!Array.isArray(list) || !list.length) return null;
    const rows = list.slice(0, max || 10).map((x) => (x && typeof x === 'object' ? flatten(x) : { value: x }));
    const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
    return el('div', {}, el('h3', { text: title + (list.length > rows.length ? ` (latest ${rows.length} of ${list.length})` : '') }),
      el('table', { class: 'data' }, el('thead', {}, el('tr', {}, cols.map((c) => el('th', { text: c })))),
        el('tbody', {}, rows.map((r) => el('tr', {}, cols.map((c) => el('td', { text: cell(c, r[c]) })))))));
  }

  async function loadFreshness(gen) {
    const box = $('freshness');
    let data;
    try {
      data = await api('api/v1/freshness');
    } catch (e) {
      if (gen !== state.generation) return;
      box.dataset.freshness = 'error';
      box.replaceChildren(el('h2', { text: 'Freshness' }), el('div', { class: 'panel-error', text: String(e) }));
      return;
    }
    if (gen !== state.generation) return;
    const f = freshnessOf(data, state.dataset);
    if (!f) {
      box.dataset.freshness = 'empty';
      box.replaceChildren(el('h2', { text: 'Freshness' }), el('p', { class: 'empty', text: `No freshness for ${state.dataset}.` }));
      return;
    }
    const flat = flatten(f);
    const used = new Set(['dataset', 'name']);
    const tiles = [];
    const tables = [];

    const [, speed] = pick(flat, /speed.*watermark|^speed$/i, used);
    const st = parseTime(speed);
    tiles.push(tile('Speed watermark', isFinite(st) ? fmtTime(st, true) : 'nothing consumed yet', isFinite(st) ? fmtAgo(st) : '', isFinite(st) ? '' : 'warn'));

    const [, lag] = pick(flat, /lag_seconds|^lag$|speed\.lag$/i, used);
    const [, parts] = pick(flat, /partitions/i, used);
    let lagMsgs = null;
    if (Array.isArray(parts)) lagMsgs = parts.reduce((s, x) => s + (Number(x && x.lag) || 0), 0);
    if (lag !== undefined || lagMsgs !== null) {
      const secs = Number(lag);
      tiles.push(tile('Lag', lag !== undefined && isFinite(secs) ? fmtDuration(secs) : '—',
        lagMsgs !== null ? `${fmtNum(lagMsgs)} messages behind over ${parts.length} partition${parts.length === 1 ? '' : 's'}` : '',
        secs > 300 ? 'bad' : secs > 60 ? 'warn' : ''));
      box.dataset.lagSeconds = isFinite(secs) ? String(secs) : '';
    }
    if (Array.isArray(parts)) tables.push(objTable('Partitions', parts, 64));

    const [, batch] = pick(flat, /batch.*watermark|^batch$/i, used);
    const bt = parseTime(batch);
    tiles.push(tile('Batch watermark', isFinite(bt) && bt > 0 ? fmtDay(bt) : 'no exact day yet',
      isFinite(bt) && bt > 0 ? `exact through this day; approximate after ${fmtTime(floorTo(bt, 'day') + DAY)}` : '', isFinite(bt) && bt > 0 ? '' : 'warn'));

    const [, pending] = pick(flat, /pending|dirty|correction/i, used);
    if (pending !== undefined) {
      const list = Array.isArray(pending) ? pending : [];
      const n = Array.isArray(pending) ? pending.length : Number(pending) || 0;
      const days = list.map((x) => (typeof x === 'object' && x ? x.day || x.date || JSON.stringify(x) : String(x)).slice(0, 10));
      tiles.push(tile('Pending corrections', String(n), n ? days.slice(0, 6).join(', ') + (days.length > 6 ? ' …' : '') : 'none: every sealed day is exact', n ? 'warn' : ''));
      box.dataset.pending = String(n);
    }

    const [, runs] = pick(flat, /runs/i, used);
    if (Array.isArray(runs)) {
      const last = runs[0] || {};
      const lf = flatten(last);
      const status = lf.status || lf.state || '';
      const when = lf.finished || lf.finished_at || lf.at || lf.started || lf.started_at || '';
      tiles.push(tile('Last batch run', runs.length ? `${status || '?'}${lf.day ? ' · ' + String(lf.day).slice(0, 10) : ''}` : 'none yet',
        when ? fmtTime(parseTime(when), true) + ' · ' + fmtAgo(parseTime(when)) : '', /fail/i.test(status) ? 'bad' : ''));
      tables.push(objTable('Batch runs', runs, 10));
    }

    const [, drift] = pick(flat, /drift/i, used);
    if (Array.isArray(drift)) {
      const rels = drift.map((x) => Math.abs(Number(x && (x.relative_error ?? x.rel_error ?? x.relative)))).filter(isFinite);
      if (rels.length) tiles.push(tile('Drift (max relative)', (100 * Math.max(...rels)).toFixed(2) + ' %', `speed vs exact over ${drift.length} day·metric${drift.length === 1 ? '' : 's'}`));
      tables.push(objTable('Drift: speed view vs exact batch', drift, 20));
    } else if (drift && typeof drift === 'object') {
      tables.push(objTable('Drift', [drift]));
    }

    const rest = Object.entries(flat).filter(([k, v]) => !used.has(k) && (v === null || typeof v !== 'object'));
    const restArrays = Object.entries(flat).filter(([k, v]) => !used.has(k) && Array.isArray(v));
    for (const [k, v] of restArrays) tables.push(objTable(k, v, 10));
    if (rest.length) tables.push(objTable('Other', [Object.fromEntries(rest)]));

    const more = tables.filter(Boolean);
    box.dataset.freshness = 'ok';
    box.replaceChildren(el('h2', { text: `Freshness · ${state.dataset}` }), el('div', { class: 'fresh-tiles' }, tiles),
      more.length ? el('details', { class: 'fresh-more', open: box.querySelector('details[open]') ? true : undefined },
        el('summary', { text: 'Runs, partitions and drift' }), el('div', { class: 'fresh-tables' }, more)) : null);
  }

  // ---- boot ---------------------------------------------------------------------------------

  function boot() {
    try {
      const r = Number(localStorage.getItem(REFRESH_STORE));
      if (localStorage.getItem(REFRESH_STORE) !== null && [0, 5, 15, 60].includes(r)) state.refresh = r;
    } catch (e) { /* private mode */ }
    bindControls();
    $('refresh').value = String(state.refresh);
    $('apikey').value = apiKey();
    if (typeof ResizeObserver === 'function') {
      state.resize = new ResizeObserver(() => {
        for (const [id, u] of state.charts) {
          const box = document.querySelector(`.panel[data-panel="${CSS.escape(id)}"] .chart`);
          if (box && Math.abs(box.clientWidth - u.width) > 4) u.setSize({ width: box.clientWidth, height: u.height });
        }
      });
      state.resize.observe($('panels'));
    }
    start();
  }

  boot();
})();
