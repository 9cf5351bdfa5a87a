"""noops example: a minimal Flask app.

The builder detects requirements.txt + gunicorn and starts it with
``gunicorn app:app``; running ``python app.py`` uses Flask's dev server.
"""
import logging
import os
import signal
import sys
import time

from flask import Flask, g, request

# Tests edit this constant to check that a rebuild picks up source changes.
VERSION = "1.0.0"
NAME = "flask"
MARKER = f"noops example: {NAME}"

logging.basicConfig(
    stream=sys.stdout,
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)
log = logging.getLogger("noops.example.flask")

app = Flask(__name__)


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
    body = f"{MARKER}\nversion: {VERSION}\n"
    return body, 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/healthz")
def healthz():
    return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/version")
def version():
    return VERSION, 200, {"Content-Type": "text/plain; charset=utf-8"}


def _main():
    # Development entrypoint. In production gunicorn handles SIGTERM itself.
    def _on_sigterm(signum, frame):
        log.info("received SIGTERM, shutting down")
        sys.exit(0)

    signal.signal(signal.SIGTERM, _on_sigterm)
    # after_request already logs one line per request; mute werkzeug's copy.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = int(os.environ.get("PORT", "8080"))
    app.run(host="0.0.0.0", port=port)


if __name__ == "__main__":
    _main()
