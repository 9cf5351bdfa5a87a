'use strict';

// noops example: a minimal Express 4 app.
// The builder detects package.json and starts it with `npm start`.

const express = require('express');

const NAME = 'express';
const MARKER = `noops example: ${NAME}`;
const VERSION = '1.0.0';
const PORT = Number.parseInt(process.env.PORT || '8080', 10);
const HOST = '0.0.0.0';

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
  res.type('text/plain').send(`${MARKER}\nversion: ${VERSION}\n`);
});

app.get('/healthz', (req, res) => {
  res.type('text/plain').send('ok');
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
  // Close idle keep-alive sockets (Node >= 18.2) so close() can finish.
  if (typeof server.closeIdleConnections === 'function') {
    server.closeIdleConnections();
  }
  // Do not hang forever on a stuck client.
  setTimeout(() => process.exit(0), 10000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
