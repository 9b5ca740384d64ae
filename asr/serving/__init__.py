"""Serving: `asr serve`, an OpenAI-compatible transcription server with a web page.

`workers` runs the transcription engine (`asr.inference.engine`: a step at a time, words handed
out as they settle, stoppable between steps) on a fixed number of model copies behind a bounded
queue, `jobs` carries a job's events to its request, `responses` shapes results and errors as
OpenAI's API does, `uploads` writes request bodies to disk within a size limit, `access` checks
who may call (Host, Origin, API keys), `live` gives live captions over a WebSocket (OpenAI's
Realtime transcription events on `asr.inference.streaming.Stream`; `turns`: its energy turn
detector), and `app` is the FastAPI application (routes, limits) that serves `page/` at `/`.
Needs the `serve` extra (FastAPI, uvicorn, python-multipart, websockets); imports neither
Lightning nor matplotlib.
"""
