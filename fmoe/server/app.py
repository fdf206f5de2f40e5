"""The FastAPI application: routes, API-key check, and errors as JSON (never a traceback).

    engine = ServerEngine(model, tok, name="fmoe-demo").start()
    app = create_app(engine, api_key="secret", host="127.0.0.1")      # api_key None: no key check
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, GET /v1/models (OpenAI), POST /v1/messages and /v1/messages/count_tokens
(Anthropic), GET /health (no key).
With an API key every /v1 route needs ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (401 otherwise).
Without an API key, the server trusts whoever can reach it, so two checks keep web pages out (a page in a browser
on this machine can send requests to 127.0.0.1): a POST body must be ``Content-Type: application/json`` (415
otherwise; a page can send text/plain or a form without a CORS preflight, never JSON), and the ``Host`` header must
be a loopback name or address, an IP address when the server is bound to all interfaces, or the bound host (403
otherwise: a DNS-rebinding page sends its own domain name).
Errors are written in the API's own shape: Anthropic's for /v1/messages, OpenAI's everywhere else.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request

from fmoe.server import anthropic_api, openai_api
from fmoe.server.errors import ApiError, error_response

log = logging.getLogger("fmoe.server")


def _is_anthropic(request: Request) -> bool:
    return request.url.path.startswith("/v1/messages")


def _host_name(header: str) -> str:
    """The name of a Host header without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(header: str, bound: str | None = None) -> bool:
    """Whether a keyless server answers a request with this Host header: a loopback name ("localhost",
    "*.localhost") or address, the bound host itself, or any IP address when bound to all interfaces (0.0.0.0,
    ::). A domain name (what a DNS-rebinding page sends) is refused."""
    name = _host_name(header).rstrip(".")
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    if ip is not None and ip.is_loopback:
        return True
    b = _host_name(bound or "").rstrip(".")
    if b and name == b:
        return True
    bip = _ip(b)
    return ip is not None and bip is not None and bip.is_unspecified


class HostCheck:
    """ASGI middleware (not BaseHTTPMiddleware: it would buffer the event streams): 403 for a Host header that
    host_allowed refuses."""

    def __init__(self, app, bound: str | None = None):
        self.app, self.bound = app, bound

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not host_allowed(host, self.bound):
                e = ApiError(403, f"Host {host!r} is not accepted: without --api-key the server answers only "
                                  "requests addressed to this machine by a loopback name or an IP address "
                                  "(DNS-rebinding protection); start it with --api-key to serve other names",
                             code="invalid_host")
                await error_response(e, scope.get("path", "").startswith("/v1/messages"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine, api_key: str | None = None, host: str | None = None) -> FastAPI:
    """``host``: the address the server is bound to (accepted as a Host header when there is no API key)."""
    app = FastAPI(title="fmoe", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if api_key is None:
        app.add_middleware(HostCheck, bound=host)

    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY or x-api-key: KEY)",
                           code="invalid_api_key")

    auth = [Depends(require_key)]
    app.add_api_route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/models", openai_api.list_models, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/messages", anthropic_api.messages, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/messages/count_tokens", anthropic_api.count_tokens, methods=["POST"], dependencies=auth)

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.status()}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e, _is_anthropic(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(ApiError(e.status_code, str(e.detail)), _is_anthropic(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return error_response(ApiError(400, str(e)), _is_anthropic(request))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("request failed")
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"), _is_anthropic(request))

    return app

