"""A live server on the embedded demo model: uvicorn on a free port of 127.0.0.1, on a background thread."""
from __future__ import annotations

import pytest

from fmoe.tools.builtin_calculator import calculator
from fmoe.tools.demo import tool_schemas

QUESTION = "What is 1234 * 5678?"


def demo_tools() -> list[dict]:
    """The demo model's eight tools (its training schemas), calculator's replaced by the built-in one."""
    tools = dict(tool_schemas())
    tools["calculator"] = calculator.openai_schema()
    return list(tools.values())


def anthropic_tools() -> list[dict]:
    return [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]} for t in demo_tools()]


@pytest.fixture(scope="session")
def demo():
    from fmoe.engine.loader import load

    return load(None)


@pytest.fixture(scope="session")
def server(demo):
    from fmoe.server.run import BackgroundServer

    model, tok = demo
    with BackgroundServer(model, tok, port=0, name="fmoe-demo", max_queue=8) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(server):
    import anthropic

    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
