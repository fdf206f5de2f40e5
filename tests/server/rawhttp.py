"""Plain HTTP for the tests that need what the SDKs hide: status codes, headers, raw bodies, a dropped connection."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse


def connect(url: str, timeout: float = 120) -> http.client.HTTPConnection:
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def request(url: str, method: str, path: str, body=None, headers: dict | None = None):
    """(status, headers, parsed JSON body or the raw text)."""
    conn = connect(url)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
    r = conn.getresponse()
    raw = r.read().decode()
    conn.close()
    try:
        return r.status, dict(r.getheaders()), json.loads(raw)
    except json.JSONDecodeError:
        return r.status, dict(r.getheaders()), raw


def post(url: str, path: str, body, headers: dict | None = None):
    return request(url, "POST", path, body, headers)


def get(url: str, path: str, headers: dict | None = None):
    return request(url, "GET", path, None, headers)
