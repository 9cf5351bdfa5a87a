"""noops example: shop-frontend, the front end of the two-service shop.

A Flask app with no OpenTelemetry code. It lists the shop's items, which it asks the
``shop-inventory`` app for on every page view:

* deployed on noops, through the platform's egress proxy: ``$NOOPS_GATEWAY_URL`` (plain HTTP to
  ``127.0.0.1:15001`` inside the instance's network namespace), with the target app's host name
  in ``Host``; the front door checks the frontend's workload identity (its SPIFFE ID) against
  the policy before the request reaches the inventory;
* run anywhere else, straight to ``$INVENTORY_URL`` (default ``http://127.0.0.1:8081``).

The noops Python buildpack adds auto-instrumentation, so a page view is one trace: the
frontend's server span, its ``requests`` client span, and the inventory's server span.
"""
import logging
import os
import sys
import time

import requests
from flask import Flask, g, jsonify, request

NAME = "shop-frontend"
MARKER = f"noops example: {NAME}"
INVENTORY_HOST = os.environ.get("INVENTORY_HOST", "shop-inventory.localhost")

logging.basicConfig(
    stream=sys.stdout,
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)
log = logging.getLogger("noops.example.shop-frontend")

app = Flask(__name__)
session = requests.Session()


def inventory(path):
    """GET ``path`` from the inventory app; return its JSON."""
    gateway = os.environ.get("NOOPS_GATEWAY_URL")
    if gateway:
        url, headers = gateway.rstrip("/") + path, {"Host": INVENTORY_HOST}
    else:
        url = os.environ.get("INVENTORY_URL", "http://127.0.0.1:8081").rstrip("/") + path
        headers = {}
    response = session.get(url, headers=headers, timeout=5)
    response.raise_for_status()
    return response.json()


@app.before_request
def _start_timer():
    g.started = time.monotonic()


@app.after_request
def _log_request(response):
    elapsed_ms = (time.monotonic() - g.get("started", time.monotonic())) * 1000
    log.info(
        "%s %s %s %.1fms", request.method, request.path, response.status_code, elapsed_ms
    )
    return response


@app.get("/")
def index():
    lines = [MARKER]
    try:
        items = inventory("/items")
    except (requests.RequestException, ValueError) as exc:
        log.warning("inventory unavailable: %s", exc)
        lines.append(f"inventory unavailable: {exc}")
    else:
        log.info("listed %d items from the inventory", len(items))
        for item in items:
            state = f"{item['stock']} in stock" if item["stock"] else "sold out"
            lines.append(f"{item['name']} ({item['sku']}): {state}")
    return "\n".join(lines) + "\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/api/items/<sku>")
def item(sku):
    try:
        return jsonify(inventory(f"/items/{sku}"))
    except requests.HTTPError as exc:
        return jsonify(error=str(exc)), exc.response.status_code
    except (requests.RequestException, ValueError) as exc:
        return jsonify(error=f"inventory unavailable: {exc}"), 502


@app.get("/healthz")
def healthz():
    return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
