"""Errors as the two APIs write them: every failure is JSON, never a traceback.

    raise ApiError(400, "unknown role 'robot'", param="messages.[0].role")
    error_response(exc, anthropic=False) -> JSONResponse
        OpenAI:    {"error": {"message", "type": "invalid_request_error", "param", "code"}}
        Anthropic: {"type": "error", "error": {"type": "invalid_request_error", "message"}}
"""
from __future__ import annotations

from starlette.responses import JSONResponse

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                 404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 415: "invalid_request_error", 429: "rate_limit_error",
                 500: "server_error", 503: "server_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    415: "invalid_request_error", 429: "rate_limit_error",
                    500: "api_error", 503: "overloaded_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               anthropic: bool = False) -> dict:
    if anthropic:
        if param:
            message = f"{param}: {message}"
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(e: ApiError, anthropic: bool = False) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.param, e.code, anthropic), status_code=e.status,
                        headers=e.headers)
