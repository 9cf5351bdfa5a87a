'use strict';

// noops example: shop-inventory, the back end of the two-service shop.
// An Express 4 app with no OpenTelemetry code: the noops Node.js buildpack adds
// auto-instrumentation, so each request shows up as a server span that continues the
// trace of the shop-frontend call (the W3C `traceparent` header it sends).

const express = require('express');

const NAME = 'shop-inventory';
const MARKER = `noops example: ${NAME}`;
const PORT = Number.parseInt(process.env.PORT || '8080', 10);
const HOST = '0.0.0.0';

const ITEMS = [
  { sku: 'mug', name: 'Enamel mug', stock: 12 },
  { sku: 'tee', name: 'Organic T-shirt', stock: 0 },
  { sku: 'cap', name: 'Wool cap', stock: 5 },
];

const app = express();
app.disable('x-powered-by');

// One log line per request, written when the response finishes.
app.use((req, res, next) => {
  const started = process.hrtime.bigint();
  res.on('finish', () => {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(
      `${new Date().toISOString()} ${req.method} ${req.originalUrl} ${res.statusCode} ${ms.toFixed(1)}ms`
    );
  });
  next();
});

app.get('/', (req, res) => {
  res.type('text/plain').send(`${MARKER}\nitems: ${ITEMS.length}\n`);
});

app.get('/healthz', (req, res) => {
  res.type('text/plain').send('ok');
});

app.get('/items', (req, res) => {
  res.json(ITEMS);
});

app.get('/items/:sku', (req, res) => {
  const item = ITEMS.find((i) => i.sku === req.params.sku);
  if (!item) {
    res.status(404).json({ error: `no item ${req.params.sku}` });
    return;
  }
  res.json(item);
});

const server = app.listen(PORT, HOST, () => {
  console.log(`${MARKER} listening on http://${HOST}:${PORT}`);
});

function shutdown(signal) {
  console.log(`received ${signal}, shutting down`);
  server.close((err) => {
    if (err) {
      console.error(err);
      process.exit(1);
    }
    process.exit(0);
  });
  if (typeof server.closeIdleConnections === 'function') {
    server.closeIdleConnections();
  }
  setTimeout(() => process.exit(0), 10000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
