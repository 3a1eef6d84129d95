#!/usr/bin/env node
// A tiny webhook receiver that verifies every request exactly as the public mgPass guide shows:
// HMAC-SHA256 over JSON.stringify(req.body), compared with crypto.timingSafeEqual.
// Usage: WEBHOOK_SECRET=... node scripts/demo-receiver.js [port]   (no npm packages needed)
// HOST sets the listen address (default 127.0.0.1; docker-compose.yml sets 0.0.0.0).
'use strict';
const http = require('http');
const crypto = require('crypto');

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error('demo-receiver: set WEBHOOK_SECRET to the subscription secret');
  process.exit(2);
}
const port = Number(process.argv[2] || process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';

// The guide's function, verbatim.
function verifyWebhook(body, signature, secret) {
  const expected = crypto
    .createHmac('sha256', secret)
    .update(body)
    .digest('hex');
  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expected)
  );
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let parsed;
      try {
        // What express.json() does: req.body = JSON.parse(raw body).
        parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        res.writeHead(400).end('Bad JSON');
        return;
      }
      const signature = String(req.headers['x-webhook-signature'] || '');
      let isValid = false;
      try {
        isValid = verifyWebhook(JSON.stringify(parsed), signature, secret);
      } catch (e) {
        isValid = false; // timingSafeEqual throws when the lengths differ
      }
      const id = req.headers['x-webhook-id'];
      const attempt = req.headers['x-webhook-attempt'];
      if (!isValid) {
        console.log(`REJECTED  ${id} attempt=${attempt}: invalid signature`);
        res.writeHead(401).end('Invalid signature');
        return;
      }
      console.log(`VERIFIED  ${id} attempt=${attempt} ${parsed.event_type} ${JSON.stringify(parsed.data)}`);
      res.writeHead(200).end('OK');
    });
  })
  .listen(port, host, () => console.log(`demo-receiver listening on http://${host}:${port}/webhook`));
