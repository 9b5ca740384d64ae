"""Who may call `asr serve`: the Host and Origin checks, CORS for the origins allowed, API keys.

A server on this machine (or a private network) is reachable by any web page a browser on it
opens. Two attacks follow, and each check here stops one:

- DNS rebinding: a page of attacker.example has its name re-pointed at 127.0.0.1; the browser
  then lets it read the server's answers, as the same "origin". Its requests still carry
  `Host: attacker.example`, so a Host that is not a name of this server gets 421. The names
  are the bound address, `localhost` and `allowed_hosts` ("*": any); bound to every interface
  (0.0.0.0, ::), any IP address too. Any port: a tunnel or proxy may forward another one, and
  DNS rebinding changes the name, not the port.
- Cross-origin simple requests: any page can POST a multipart form (no CORS preflight for it)
  and make the server transcribe, costing its time, even if the page cannot read the answer.
  An `Origin` other than the server's own (scheme, host and port of the request) gets 403,
  unless it is one of `cors_origins`, which also get CORS headers; the page at / is the
  server's own. Clients other than browsers send no Origin.

Both checks apply to WebSocket handshakes too (live captions, `live`): browsers send Origin on
them and no CORS protects them, so a foreign page's handshake is refused (403) before it is
accepted; a ws:// request's own origin is the http:// one of its Host.

With API keys, /v1/* and /subtitles need `Authorization: Bearer KEY` (401 without). A browser
cannot set headers on a WebSocket, so its handshake may offer the key as the subprotocol
`openai-insecure-api-key.KEY` instead, as OpenAI's browser clients do (`websocket_authorization`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from asr.serving.responses import ApiError
from asr.serving.uploads import drain


def add_access_checks(
    app: FastAPI, host: str, allowed_hosts: Sequence[str], cors_origins: Sequence[str]
) -> None:
    """Check Host and Origin before anything else runs, and add CORS for `cors_origins`
    (see the module docstring). Add it last: the middleware added last runs first."""
    origins = [canonical_origin(origin) for origin in cors_origins]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip
    app.add_middleware(HostAndOrigin, host=host, allowed_hosts=allowed_hosts, origins=origins)


def check_api_key(header: str, keys: list[bytes]) -> None:
    """Raise a 401 ApiError unless the Authorization `header` is `Bearer KEY` of one of `keys`."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "this server needs an API key: send the header "
                       "'Authorization: Bearer KEY'", code="invalid_api_key")  # fmt: skip
    given = key.strip().encode()
    # compare_digest with every key: the time taken does not tell how much of a key matched.
    if not any([hmac.compare_digest(given, k) for k in keys]):
        raise ApiError(401, "incorrect API key", code="invalid_api_key")


KEY_PROTOCOL = "openai-insecure-api-key."  # a WebSocket subprotocol carrying an API key


def websocket_authorization(headers: Headers) -> str:
    """The Authorization a WebSocket handshake gives: its header, else `Bearer KEY` for a
    subprotocol `openai-insecure-api-key.KEY` it offers, else ""."""
    if headers.get("authorization"):
        return headers["authorization"]
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    keys = [p[len(KEY_PROTOCOL) :] for p in offered if p.startswith(KEY_PROTOCOL)]
    return f"Bearer {keys[0]}" if keys else ""


class HostAndOrigin:
    """ASGI middleware: 421 for a Host header that is not a name of this server, 403 for an
    Origin header other than the server's own and `origins` (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, host: str, allowed_hosts: Sequence[str], origins: Sequence[str]
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.any_address = host in ("0.0.0.0", "::", "")  # every interface: any of its addresses
        self.names = sorted({_host_name(h) for h in (host, "localhost", *allowed_hosts)})
        self.any_origin = "*" in origins
        self.origins = {_origin_key(origin) for origin in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
        error = self._check(scheme, headers.get("host"), headers.get("origin"))
        if error is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await deny_websocket(error, scope, receive, send)
            return
        if headers.get("expect", "").lower() != "100-continue":
            await drain(receive)  # so that the client hears the answer (uploads.DRAIN_SECONDS)
        await error.response()(scope, receive, send)

    def _check(self, scheme: str, host: str | None, origin: str | None) -> ApiError | None:
        if host is not None and not self._host_allowed(host):
            return ApiError(421, f"Host {host!r} is not a name of this server ("
                            f"{', '.join(self.names)}); start it with --allowed-host NAME to "
                            "add a name", code="host_not_allowed")  # fmt: skip
        if origin is None or self.any_origin or _origin_key(origin) in self.origins:
            return None
        own = f"{scheme}://{host}" if host is not None else None
        if own is not None and _origin_key(origin) == _origin_key(own):
            return None
        return ApiError(403, f"Origin {origin!r} may not use this server: only its own pages "
                        f"({own or 'no Host given'}) and origins given with --cors-origin may",
                        code="origin_not_allowed")  # fmt: skip

    def _host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if self.any_host or name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


async def deny_websocket(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake with `error`'s status and JSON body (a browser's script
    sees only a failed connection; other clients read the answer); a server without the ASGI
    denial-response extension closes it instead (HTTP 403)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await error.response()(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})


def _host_name(host: str) -> str:
    """The name in a Host header (or an address), without its port: lowercase, IPv6 bare."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # name:port; more colons: an IPv6 address without brackets
        host = host.partition(":")[0]
    return host.rstrip(".")


def _origin_key(origin: str) -> tuple[str, str, int] | str:
    """(scheme, host, port) of an origin, the port filled in; an origin that is not a URL
    (like "null") as it is."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return origin
    if not parts.hostname or port is None:
        return origin
    return parts.scheme.lower(), parts.hostname.rstrip("."), port


def canonical_origin(origin: str) -> str:
    """An origin as browsers send it: scheme://host[:port], without a default port or a final
    slash ("*" as it is)."""
    key = _origin_key(origin.strip().rstrip("/"))
    if isinstance(key, str):
        return key
    scheme, host, port = key
    shown = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{shown}" + ("" if port == default else f":{port}")
