"""The FastAPI application: routes, API-key check, and errors as JSON (never a traceback).

    engine = ServerEngine(model, tok, name="fmoe-demo").start()
    app = create_app(engine, api_key="secret")       # api_key None: no check
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, GET /v1/models (OpenAI), POST /v1/messages and /v1/messages/count_tokens
(Anthropic), GET /health (no key).
With an API key every /v1 route needs ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (401 otherwise).
Errors are written in the API's own shape: Anthropic's for /v1/messages, OpenAI's everywhere else.
"""
from __future__ import annotations

import hmac
import logging

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from fmoe.server import anthropic_api, openai_api
from fmoe.server.errors import ApiError, error_response

log = logging.getLogger("fmoe.server")


def _is_anthropic(request: Request) -> bool:
    return request.url.path.startswith("/v1/messages")


def create_app(engine, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="fmoe", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

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

