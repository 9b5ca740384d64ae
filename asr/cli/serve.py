"""`asr serve`: the OpenAI-compatible transcription server and its web page (`asr.serving`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from pathlib import Path

from asr.cli.options import (
    MODEL_HELP,
    add_chunking_arguments,
    add_decoding_arguments,
    add_device_argument,
    add_streaming_arguments,
    chunking_options,
    decoding_options,
)

log = logging.getLogger(__name__)
API_KEYS_VARIABLE = "ASR_API_KEYS"
LIVE_STREAMS, LIVE_IDLE, LIVE_MESSAGE_KB = 4, 30.0, 1024.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr serve`."""
    parser.description = (
        "Serve models over HTTP: OpenAI's POST /v1/audio/transcriptions, GET /v1/models, "
        "GET /health, live captions over a WebSocket (GET /v1/realtime?intent=transcription, "
        "OpenAI's Realtime transcription events; models trained to stream) and a web page at "
        "/. Needs the serve extra: pip install 'asr[serve]'."
    )
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]MODEL",
                        help=f"{MODEL_HELP}, served as NAME (default: the shipped name or the "
                        "file's stem); repeat to serve several, the first is the default")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    add_device_argument(parser)
    parser.add_argument("--workers", type=int, default=1,
                        help="model workers (threads), each with its own copy of every model: "
                        "requests decoded at once (default %(default)s)")  # fmt: skip
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: CPU cores / workers, at least 1)")  # fmt: skip
    parser.add_argument("--queue-size", type=int, default=16,
                        help="requests that may wait for a worker; more get 503 (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-upload-mb", type=float, default=200.0,
                        help="larger uploads get 413 (default %(default)s)")  # fmt: skip
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may take, upload included (default %(default)s)")  # fmt: skip
    parser.add_argument("--upload-dir", type=Path, metavar="DIR",
                        help="folder for uploads while they are received and transcribed "
                        "(default: the system's temporary folder); it holds at most (workers + "
                        "queue size) x the upload limit")  # fmt: skip
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="require 'Authorization: Bearer KEY' (repeatable). A key given here "
                        "is visible to other users in ps: prefer --api-key-file or "
                        f"{API_KEYS_VARIABLE} (comma-separated keys)")  # fmt: skip
    parser.add_argument("--api-key-file", type=Path, metavar="PATH",
                        help="require one of the keys in PATH, one key per line")  # fmt: skip
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name clients may call this server by in the Host header, "
                        "besides its address and localhost (any port; repeatable; '*': any); "
                        "other names get 421, against DNS rebinding")  # fmt: skip
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="a web origin (scheme://host[:port]) whose pages may call this "
                        "server, with CORS headers (repeatable; '*': any); requests from other "
                        "pages than the server's own get 403")  # fmt: skip
    add_decoding_arguments(parser)
    add_chunking_arguments(parser)
    live = add_streaming_arguments(
        parser, "live captions (WebSocket GET /v1/realtime?intent=transcription; a model "
        "trained with encoder.chunk_conv or causal_conv and features.normalize running, "
        "global or none)"
    )  # fmt: skip
    live.add_argument("--max-live-streams", type=int, default=LIVE_STREAMS, metavar="N",
                      help="live sessions at once; more are closed with code 1013 (try again "
                      "later); 0 turns live captions off (default %(default)s)")  # fmt: skip
    live.add_argument("--live-idle-seconds", type=float, default=LIVE_IDLE, metavar="S",
                      help="close a live session that sends nothing for S seconds (code 1000; "
                      "default %(default)s)")  # fmt: skip
    live.add_argument("--live-max-message-kb", type=float, default=LIVE_MESSAGE_KB, metavar="KB",
                      help="larger WebSocket messages close the session (code 1009; default "
                      "%(default)s: about 16 s of 24 kHz audio in base64)")  # fmt: skip


def serve_command(args: argparse.Namespace) -> int:
    """Load the models, listen, serve until interrupted."""
    from asr.extras import require

    uvicorn = require("uvicorn", "serve", "asr serve")
    require("fastapi", "serve", "asr serve")
    require("python_multipart", "serve", "asr serve")
    import torch

    from asr.serving.app import ServerLimits, build_app
    from asr.serving.live import LiveOptions
    from asr.serving.workers import ModelWorkers

    models = model_names(args.model)
    keys = [*args.api_key, *os.environ.get(API_KEYS_VARIABLE, "").split(",")]
    if args.api_key_file is not None:
        keys += read_key_file(args.api_key_file)
    keys = [key.strip() for key in keys if key.strip()]
    limits = ServerLimits(round(args.max_upload_mb * 2**20), args.request_timeout, args.upload_dir)
    if args.workers < 1 or args.queue_size < 0:
        raise ValueError("--workers must be >= 1 and --queue-size >= 0")
    decoding, chunking = decoding_options(args), chunking_options(args)
    live = LiveOptions(args.max_live_streams, args.live_idle_seconds,
                       round(args.live_max_message_kb * 1024), args.chunk_ms,
                       args.left_seconds, args.lookahead_ms)  # fmt: skip
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    torch.set_num_threads(threads)
    workers = ModelWorkers.load(models, args.workers, args.queue_size, args.device, decoding,
                                threads, chunking=chunking)  # fmt: skip
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    app = build_app(workers, limits, keys, host=host, allowed_hosts=args.allowed_host,
                    cors_origins=args.cors_origin, live=live)  # fmt: skip
    for name, reason in app.state.live.cannot.items():
        if reason is not None and live.max_streams:
            log.info("model %r cannot give live captions: %s", name, reason)
    if not keys and not ipaddress.ip_address(host).is_loopback:
        log.warning("listening on %s without an API key: anyone who can reach it may use it", host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"asr serve: {url} (models: {', '.join(models)}; workers: {args.workers}, "
          f"queue: {args.queue_size})", flush=True)  # fmt: skip
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5,
                            ws_max_size=live.max_message_bytes)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def model_names(specs: list[str]) -> dict[str, str]:
    """`--model` values -> {name: bundle}; NAME=MODEL names one, else its shipped name or stem."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:  # runs/lr=0.1/model.pt is a path, not a name
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ValueError(f"--model {spec!r}: expected MODEL or NAME=MODEL")
        if name in models:
            raise ValueError(f"two models are named {name!r}: name them with NAME=MODEL")
        models[name] = path
    return models


def read_key_file(path: Path) -> list[str]:
    """The keys in `path`, one a line (blank lines skipped); ValueError when there are none."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ValueError(f"--api-key-file {path}: cannot read it: {reason}") from None
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        raise ValueError(f"--api-key-file {path} holds no key (one key per line)")
    return keys


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), or ValueError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock
