"""noops example: a minimal FastAPI app.

The builder detects pyproject.toml with fastapi + uvicorn and starts it with
``uvicorn main:app --host 0.0.0.0 --port $PORT``; ``python main.py`` does the same.
"""
import logging
import os
import sys
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

NAME = "fastapi"
MARKER = f"noops example: {NAME}"
VERSION = "1.0.0"

logging.basicConfig(
    stream=sys.stdout,
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)
log = logging.getLogger("noops.example.fastapi")

# The middleware below writes the one access line per request, so silence
# uvicorn's own access log (also when started as `uvicorn main:app`).
logging.getLogger("uvicorn.access").disabled = True

app = FastAPI(title="noops example: fastapi", version=VERSION)


@app.middleware("http")
async def log_requests(request: Request, call_next):
    started = time.monotonic()
    response = await call_next(request)
    elapsed_ms = (time.monotonic() - started) * 1000
    log.info(
        "%s %s %s %.1fms",
        request.method,
        request.url.path,
        response.status_code,
        elapsed_ms,
    )
    return response


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return f"{MARKER}\nversion: {VERSION}\n"


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    return "ok"


if __name__ == "__main__":
    # uvicorn installs its own SIGTERM/SIGINT handlers and drains connections.
    import uvicorn

    uvicorn.run(
        app,
        host="0.0.0.0",
        port=int(os.environ.get("PORT", "8080")),
        access_log=False,
    )
