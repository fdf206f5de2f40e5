"""@tool: schema derivation, docstrings, validation, async, timeout, output cap, errors."""
import asyncio
import enum
import time
from typing import Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel

from fmoe.tools import Tool, ToolResult, tool
from fmoe.tools.docstring import parse_docstring


def check(schema, good, bad):
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for g in good:
        assert v.is_valid(g), (g, list(v.iter_errors(g)))
    for b in bad:
        assert not v.is_valid(b), b


def no_titles(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "properties":
                for sub in v.values():
                    no_titles(sub)
                continue
            assert k != "title", node
            no_titles(v)
    elif isinstance(node, list):
        for x in node:
            no_titles(x)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: float
    y: float = 0.0


class Tree(BaseModel):
    value: int
    children: list["Tree"] = []


def test_scalar_types_and_order():
    @tool
    def f(s: str, i: int, x: float, b: bool, d: int = 3):
        return s

    p = f.parameters
    assert list(p) == ["type", "properties", "required", "additionalProperties"]
    assert list(p["properties"]) == ["s", "i", "x", "b", "d"]
    assert p["required"] == ["s", "i", "x", "b"]
    assert p["additionalProperties"] is False
    assert p["properties"]["d"] == {"type": "integer", "default": 3}
    no_titles(p)
    check(p, [{"s": "a", "i": 1, "x": 1.5, "b": True}],
          [{"s": 1, "i": 1, "x": 1, "b": True}, {"s": "a", "i": 1.5, "x": 1, "b": True}, {"s": "a"},
           {"s": "a", "i": 1, "x": 1, "b": True, "extra": 1}])


def test_literal_enum_list_dict_optional():
    @tool
    def f(unit: Literal["c", "f"], color: Color, tags: list[str], counts: dict[str, int],
          limit: Optional[int] = None):
        return None

    props = f.parameters["properties"]
    assert props["unit"]["enum"] == ["c", "f"]
    assert props["color"]["enum"] == ["red", "green"] and "$ref" not in props["color"]
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["counts"]["additionalProperties"] == {"type": "integer"}
    assert "$defs" not in f.parameters
    no_titles(f.parameters)
    ok = {"unit": "c", "color": "red", "tags": ["a"], "counts": {"a": 1}}
    check(f.parameters, [ok, {**ok, "limit": None}, {**ok, "limit": 3}],
          [{**ok, "unit": "k"}, {**ok, "color": "blue"}, {**ok, "tags": [1]}, {**ok, "counts": {"a": "x"}},
           {**ok, "limit": "x"}])


def test_pydantic_model_inlined_and_recursive_defs():
    @tool
    def f(p: Point, t: Optional[Tree] = None):
        return p

    props = f.parameters["properties"]
    assert props["p"]["type"] == "object" and set(props["p"]["properties"]) == {"x", "y"}
    no_titles(f.parameters)
    assert "Tree" in f.parameters["$defs"]  # recursive: kept as a $ref
    check(f.parameters, [{"p": {"x": 1}}, {"p": {"x": 1}, "t": {"value": 1, "children": [{"value": 2}]}}],
          [{"p": {"y": 1}}, {"p": {"x": 1}, "t": {"value": 1, "children": [{"value": "x"}]}}])
    r = f.call({"p": {"x": 1}})
    assert not r.is_error and '"x": 1.0' in r.content


def test_docstring_description_and_args():
    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
        """Get the weather.

        More text
        here.

        Args:
            city (str): name of the
                city.
            unit: temperature unit.

        Returns:
            a dict.
        """
        return {"city": city}

    assert get_weather.name == "get_weather"
    assert get_weather.description == "Get the weather.\n\nMore text here."
    props = get_weather.parameters["properties"]
    assert props["city"]["description"] == "name of the city."
    assert props["unit"]["description"] == "temperature unit."
    s = get_weather.openai_schema()
    assert s == {"type": "function", "function": {"name": "get_weather", "description": get_weather.description,
                                                  "parameters": get_weather.parameters}}
    assert get_weather("Paris") == {"city": "Paris"}  # still directly callable
    assert isinstance(get_weather, Tool)


def test_docstring_styles():
    d = parse_docstring("Summary.\n\n:param a: first\n:param b: second\n:returns: x")
    assert d.description == "Summary." and d.params == {"a": "first", "b": "second"}
    d = parse_docstring("Summary.\n\nParameters\n----------\na : int\n    the a.\nb : str\n    the b.\n")
    assert d.params == {"a": "the a.", "b": "the b."}


def test_decorator_options_and_bad_signature():
    @tool(name="other", description="desc", timeout=5)
    def f(x: int):
        return x

    assert (f.name, f.description, f.timeout) == ("other", "desc", 5)
    from fmoe.errors import ToolDefinitionError
    with pytest.raises(ToolDefinitionError):
        tool(lambda *a: a)


def test_validation_error_names_argument():
    @tool
    def f(city: str, n: int = 1):
        return city

    r = f.call({"city": 3})
    assert r.is_error and "'city'" in r.content
    r = f.call({})
    assert r.is_error and "missing required argument 'city'" in r.content
    r = f.call({"city": "x", "bogus": 1})
    assert r.is_error and "unknown argument 'bogus'" in r.content
    r = f.call('{"city": "x", "n": 2}')  # JSON text is accepted
    assert r.content == "x" and not r.is_error
    assert f.call("{not json").is_error


def test_async_tool():
    @tool
    async def f(x: int) -> dict:
        await asyncio.sleep(0.01)
        return {"y": x * 2}

    r = asyncio.run(f.acall({"x": 2}))
    assert r == ToolResult('{"y": 4}', False, False, r.elapsed_s) and r.elapsed_s > 0


def test_timeout_sync_and_async():
    @tool
    def hang(s: float):
        time.sleep(s)

    @tool
    async def ahang(s: float):
        await asyncio.sleep(s)

    for t in (hang, ahang):
        t0 = time.perf_counter()
        r = asyncio.run(t.acall({"s": 30}, timeout=0.2))
        assert r.is_error and "timed out" in r.content
        assert time.perf_counter() - t0 < 2


def test_output_cap_and_serialisation():
    @tool
    def big(n: int):
        return "x" * n

    r = big.call({"n": 3 * 1024 * 1024})
    assert r.truncated and not r.is_error
    assert len(r.content.encode()) <= 16 * 1024
    assert "truncated" in r.content and "3.0 MB" in r.content

    @tool(max_output=100)
    def small() -> list:
        return [Point(x=1)]

    assert small.call().content == '[{"x": 1.0, "y": 0.0}]'


def test_raising_tool_is_error_result():
    @tool
    def boom(city: str):
        raise ValueError(f"unknown city: {city}")

    r = boom.call({"city": "X"})
    assert r.is_error and r.content == "ValueError: unknown city: X"


def test_example_tools():
    from fmoe.tools.demo import convert_units, get_weather

    r = get_weather.call({"city": "paris", "unit": "fahrenheit"})
    assert not r.is_error and '"city": "Paris"' in r.content
    assert get_weather.call({"city": "Atlantis"}).content == "ValueError: unknown city: Atlantis"
    assert get_weather.parameters["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert convert_units(100, "c", "f")["result"] == 212
    assert convert_units(1, "mi", "km")["result"] == 1.609344
    r = convert_units.call({"value": 1, "from_unit": "kg", "to_unit": "m"})
    assert r.is_error and "cannot convert mass" in r.content
