// Verifies webhook bodies and signatures exactly as a Node/Express receiver would.
//
// Input (stdin): one JSON object per line:
//   {"id": n, "name": "...", "body_hex": "...", "signature": "...", "secret_hex": "...",
//    "event_type_hex": "...", "data_hex": "...", "timestamp": "..."}
// Every byte string travels hex-encoded, so the transport cannot mask a difference.
// `event_type_hex`/`data_hex` (the producer's input: the event type and the data as JSON text)
// are optional; when present the body must also equal JavaScript's own serialisation of them.
//
// Output (stdout): one block per failing case, then `SUMMARY checked=<n> passed=<n> failed=<n>`.
// Exit status 0 only if every case passed.
'use strict';
const crypto = require('crypto');

function fromHex(hex) {
  if (typeof hex !== 'string' || !/^(?:[0-9a-f]{2})*$/.test(hex)) {
    throw new Error('field is not lowercase hex');
  }
  return Buffer.from(hex, 'hex');
}

// Decodes UTF-8 strictly: a lossy decode (U+FFFD substitution) would hide invalid bytes.
function utf8(bytes, what) {
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) {
    throw new Error(`${what} is not valid UTF-8`);
  }
  return text;
}

function check(c) {
  const problems = [];
  const bodyBytes = fromHex(c.body_hex);
  const body = utf8(bodyBytes, 'body');
  const secret = utf8(fromHex(c.secret_hex), 'secret');

  // What the receiver does: req.body = JSON.parse(body); JSON.stringify(req.body).
  const reserialised = JSON.stringify(JSON.parse(body));
  if (reserialised !== body) {
    problems.push(`not a fixed point of JSON.stringify(JSON.parse(body)):\n    JS gives: ${reserialised}`);
  }
  const keys = Object.keys(JSON.parse(body));
  if (keys.join(',') !== 'event_type,data,timestamp') {
    problems.push(`top-level keys are [${keys}], expected [event_type,data,timestamp]`);
  }

  // The receiver's signature check, exactly as the integration guide writes it.
  const expected = crypto.createHmac('sha256', secret)
    .update(JSON.stringify(JSON.parse(body)))
    .digest('hex');
  const ours = Buffer.from(c.signature);
  const theirs = Buffer.from(expected);
  if (ours.length !== theirs.length || !crypto.timingSafeEqual(ours, theirs)) {
    problems.push(`signature mismatch:\n    header:   ${c.signature}\n    expected: ${expected}`);
  }

  // Stronger: the body is what JavaScript itself would send for the producer's input.
  if (c.data_hex !== undefined) {
    const eventType = utf8(fromHex(c.event_type_hex), 'event_type');
    const data = JSON.parse(utf8(fromHex(c.data_hex), 'data'));
    const js = JSON.stringify({ event_type: eventType, data, timestamp: c.timestamp });
    if (js !== body) {
      problems.push(`differs from JSON.stringify of the parsed input:\n    JS gives: ${js}`);
    }
  }
  return problems;
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  let checked = 0;
  let failed = 0;
  for (const line of input.split('\n')) {
    if (line.trim() === '') continue;
    checked += 1;
    let c = {};
    let problems;
    try {
      c = JSON.parse(line);
      problems = check(c);
    } catch (e) {
      problems = [`exception: ${e && e.stack ? e.stack : e}`];
    }
    if (problems.length > 0) {
      failed += 1;
      let body = '<undecodable>';
      try { body = fromHex(c.body_hex).toString('utf8'); } catch (_) { /* keep placeholder */ }
      console.log(`FAIL case ${c.id} (${c.name}):`);
      for (const p of problems) console.log(`  - ${p}`);
      console.log(`  body: ${body}`);
    }
  }
  console.log(`SUMMARY checked=${checked} passed=${checked - failed} failed=${failed}`);
  process.exitCode = failed === 0 ? 0 : 1;
});
