#!/usr/bin/env node
// Runs SQL statements through chDB (an embedded, current ClickHouse engine) so that the project's
// SQL can be checked against a modern server as well as the 18.16 test server.
//
//   node tools/chdb/run.js [FILE]       FILE (or stdin when absent or "-") holds a JSON array of
//                                       SQL strings
//
// The statements run in order in one chDB session whose data folder is a fresh temporary
// directory, removed at the end, so later statements see what earlier ones created. For each
// statement one JSON line is printed to stdout, i being its index in the array (from 0):
//
//   {"i":0,"ok":true,"out":"1\n"}                    output in TabSeparated (LAMBDA_CHDB_FORMAT)
//   {"i":1,"ok":false,"error":"Code: 62. DB::Exception: Syntax error: ..."}
//
// A failed statement does not stop the ones after it. Exit status 0 whenever the statements were
// run, whatever their results; 1 when the runner itself fails (unreadable or invalid input, chDB
// not loadable).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const FORMAT = process.env.LAMBDA_CHDB_FORMAT || 'TabSeparated';

function fail(msg) {
  process.stderr.write(`chdb/run.js: ${msg}\n`);
  process.exitCode = 1;
}

function readInput() {
  const arg = process.argv[2];
  const text = !arg || arg === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(arg, 'utf8');
  const stmts = JSON.parse(text);
  if (!Array.isArray(stmts)) throw new Error('input must be a JSON array of SQL strings');
  stmts.forEach((s, i) => {
    if (typeof s !== 'string') throw new Error(`element ${i} is not a string`);
  });
  return stmts;
}

function writeAll(text) {
  const buf = Buffer.from(text, 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e; // stdout is a non-blocking pipe: retry
    }
  }
}

// chDB throws ChdbQueryError("Query failed: Code: N. DB::Exception: ...") for a failed statement.
function errorText(e) {
  const msg = e && e.message != null ? String(e.message) : String(e);
  return msg.replace(/^Query failed:\s*/, '').trim();
}

function main() {
  let stmts;
  try {
    stmts = readInput();
  } catch (e) {
    fail(`reading input: ${e.message}`);
    return;
  }

  let Session;
  try {
    ({ Session } = require('chdb'));
  } catch (e) {
    fail(`loading chdb (run: npm ci --prefix tools/chdb): ${e.message}`);
    return;
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lambda-chdb-'));
  let session;
  try {
    session = new Session(dir);
    stmts.forEach((sql, i) => {
      let rec;
      try {
        const out = session.query(sql, FORMAT);
        rec = { i, ok: true, out: out == null ? '' : String(out) };
      } catch (e) {
        rec = { i, ok: false, error: errorText(e) };
      }
      // Written at once, so the lines so far are out even if the engine aborts the process.
      writeAll(JSON.stringify(rec) + '\n');
    });
  } catch (e) {
    fail(`chdb session: ${e && e.stack ? e.stack : e}`);
  } finally {
    if (session) {
      try { session.close(); } catch (_) { /* best effort */ }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
