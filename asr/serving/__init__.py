"""Serving: `asr serve`, an OpenAI-compatible transcription server with a web page.

`stepwise` transcribes one file a few chunks at a time (words handed out as they settle, a stop
between steps), `workers` runs that on a fixed number of model copies behind a bounded queue,
`responses` shapes results and errors as OpenAI's API does, `uploads` spools request bodies to
disk within a size limit, and `app` is the FastAPI application (routes, time limit, API keys)
that serves `page/` at `/`. Needs the `serve` extra (FastAPI, uvicorn, python-multipart);
imports neither Lightning nor matplotlib.
"""
