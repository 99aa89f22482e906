// Drives the real, unmodified @segment/analytics-node against the gateway, for analytics_check.py.
//
//     node segment_node.mjs SPEC.json
//
// SPEC: {"host": "http://127.0.0.1:PORT", "writeKey": "...", "settings": {...Analytics options},
//        "phases": [[{"method": "track", "args": {...}}, ...], ...], "flushTimeoutMs": N,
//        "deadlineMs": N}
// A `timestamp` given as {"$date": ISO} is passed as a Date, a plain string as the string (the SDK
// sends both as they are). The calls of each phase are made, then flushed; between phases one
// JSON line {"phase": i, ...} is printed and the helper waits for a line on stdin (so the caller
// can read gateway metrics between flushes). After the last phase `closeAndFlush` runs and one
// JSON line {"done": true, ...} is printed with what the SDK itself reported: delivery errors
// (its 'error' events), the HTTP requests it made, the statuses it got and the Retry-After of
// each 429 ('http_request' and 'http_response' events). Exit 0 when done, 2 past the deadline.

import { Analytics } from '@segment/analytics-node';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const deadline = setTimeout(() => {
  const line = JSON.stringify({ done: false, error: 'deadline passed' }) + '\n';
  process.stdout.write(line, () => process.exit(2));
}, spec.deadlineMs ?? 60000);
deadline.unref();

const report = { errors: [], requests: 0, retryRequests: 0, statuses: {}, retryAfter: [] };
const analytics = new Analytics({ writeKey: spec.writeKey, host: spec.host, ...spec.settings });
analytics.on('error', (e) => report.errors.push({ code: e.code, reason: String(e.reason) }));
analytics.on('http_request', (r) => {
  report.requests += 1;
  if (r.headers['X-Retry-Count']) report.retryRequests += 1;
});
analytics.on('http_response', (r) => {
  report.statuses[r.status] = (report.statuses[r.status] ?? 0) + 1;
  if (r.status === 429) report.retryAfter.push(r.headers['retry-after'] ?? null);
});

const revive = (args) => {
  const ts = args.timestamp;
  return ts && typeof ts === 'object' && '$date' in ts ? { ...args, timestamp: new Date(ts.$date) } : args;
};

const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const print = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve));

for (const [i, phase] of spec.phases.entries()) {
  for (const call of phase) {
    analytics[call.method](revive(call.args));
  }
  if (i < spec.phases.length - 1) {
    await analytics.flush({ timeout: spec.flushTimeoutMs ?? 30000 });
    await print({ phase: i, ...report });
    const next = await lines.next();
    if (next.done) break;
  }
}
await analytics.closeAndFlush({ timeout: spec.flushTimeoutMs ?? 30000 });
input.close();
clearTimeout(deadline);
await print({ done: true, ...report });
