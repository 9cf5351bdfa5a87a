'use strict';

// Start OpenTelemetry auto-instrumentation in a noops-built Node.js app, when it is wanted.
//
// The Node.js buildpack's `otel` layer preloads this file in every node process of the app
// (NODE_OPTIONS=--require). It loads upstream's
// @opentelemetry/auto-instrumentations-node/register (NodeSDK with every instrumentation,
// configured from OTEL_* variables) only when
//
//  * OTEL_SDK_DISABLED is not `true` (an app that opted out in noops.toml), and
//  * an OTLP destination or a service name is configured (OTEL_EXPORTER_OTLP_ENDPOINT, a
//    per-signal OTEL_EXPORTER_OTLP_*_ENDPOINT, or OTEL_SERVICE_NAME), as the noops runtime
//    does for every instance.
//
// Otherwise it loads nothing: an image run by hand without that environment behaves exactly as
// it would without the layer. A failure to start is reported once and never stops the app.

const SETTINGS = [
  'OTEL_SERVICE_NAME',
  'OTEL_EXPORTER_OTLP_ENDPOINT',
  'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
  'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT',
  'OTEL_EXPORTER_OTLP_LOGS_ENDPOINT',
];

function wanted(env) {
  if (String(env.OTEL_SDK_DISABLED || '').trim().toLowerCase() === 'true') {
    return false;
  }
  return SETTINGS.some((name) => String(env[name] || '').trim() !== '');
}

if (wanted(process.env)) {
  try {
    require('../node_modules/@opentelemetry/auto-instrumentations-node/build/src/register.js');
  } catch (err) {
    console.error(`noops: OpenTelemetry auto-instrumentation not started: ${err.message}`);
  }
}
