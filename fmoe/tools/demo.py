"""The demo model's tools: the two example tools it learned (``get_weather``, ``convert_units``; deterministic, no
network), the full set of eight it was trained on, and a registry of them for one conversation.

    tools:                                  # in a task file
      - fmoe.tools.demo:get_weather
      - fmoe.tools.demo:convert_units

    registry = demo_registry(workspace)     # ToolRegistry: the 8 tools, file tools bound to ``workspace``,
                                            # current_time a seeded clock (reproducible runs, as in training)
    schemas = tool_schemas()                # name -> OpenAI schema of each of the 8 tools

The training data generator (``training/datagen.py``) and ``fmoe eval demo-heldout`` both run these same objects.
"""
from __future__ import annotations

import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from fmoe.tools import tool

# city -> (temperature in °C, condition). Fixed values: the demo must be reproducible.
WEATHER: dict[str, tuple[float, str]] = {
    "Amsterdam": (11.0, "rain"),
    "Athens": (24.0, "sunny"),
    "Bangkok": (33.0, "thunderstorms"),
    "Barcelona": (21.0, "sunny"),
    "Beijing": (16.0, "hazy"),
    "Berlin": (12.0, "cloudy"),
    "Buenos Aires": (18.0, "partly cloudy"),
    "Cairo": (31.0, "sunny"),
    "Cape Town": (19.0, "windy"),
    "Chicago": (9.0, "windy"),
    "Delhi": (35.0, "hazy"),
    "Dubai": (38.0, "sunny"),
    "Hong Kong": (27.0, "humid"),
    "Istanbul": (17.0, "partly cloudy"),
    "Lagos": (30.0, "thunderstorms"),
    "Lisbon": (20.0, "sunny"),
    "London": (13.0, "drizzle"),
    "Los Angeles": (23.0, "sunny"),
    "Madrid": (22.0, "sunny"),
    "Mexico City": (19.0, "partly cloudy"),
    "Moscow": (4.0, "snow"),
    "Mumbai": (31.0, "humid"),
    "Nairobi": (22.0, "partly cloudy"),
    "New York": (15.0, "cloudy"),
    "Oslo": (3.0, "snow"),
    "Paris": (14.0, "cloudy"),
    "Reykjavik": (2.0, "windy"),
    "Rome": (20.0, "sunny"),
    "San Francisco": (16.0, "fog"),
    "São Paulo": (24.0, "rain"),
    "Seoul": (14.0, "clear"),
    "Singapore": (31.0, "thunderstorms"),
    "Stockholm": (6.0, "cloudy"),
    "Sydney": (22.0, "sunny"),
    "Tokyo": (18.0, "clear"),
    "Toronto": (8.0, "rain"),
    "Vienna": (13.0, "cloudy"),
    "Zurich": (10.0, "fog"),
}
_BY_KEY = {name.casefold(): name for name in WEATHER}


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather in a city.

    Args:
        city: Name of the city, e.g. "Paris" or "New York".
        unit: Temperature unit of the result.
    """
    name = _BY_KEY.get(" ".join(city.split()).casefold())
    if name is None:
        raise ValueError(f"unknown city: {city}")
    celsius, condition = WEATHER[name]
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32, 1)
    return {"city": name, "temperature": temperature, "unit": unit, "condition": condition}


# unit -> (dimension, factor to the base unit); temperature handled separately.
_LINEAR: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mi": ("length", 1609.344),
    "ft": ("length", 0.3048), "in": ("length", 0.0254),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
}
_TEMPERATURE = ("c", "f", "k")
_ALIASES = {"celsius": "c", "fahrenheit": "f", "kelvin": "k", "°c": "c", "°f": "f", "meter": "m", "meters": "m",
            "kilometer": "km", "kilometers": "km", "mile": "mi", "miles": "mi", "foot": "ft", "feet": "ft",
            "inch": "in", "inches": "in", "centimeter": "cm", "centimeters": "cm", "kilogram": "kg",
            "kilograms": "kg", "gram": "g", "grams": "g", "pound": "lb", "pounds": "lb", "lbs": "lb",
            "ounce": "oz", "ounces": "oz"}


def _unit(u: str) -> str:
    key = u.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _LINEAR and key not in _TEMPERATURE:
        known = ", ".join([*_LINEAR, *_TEMPERATURE])
        raise ValueError(f"unknown unit: {u} (known: {known})")
    return key


def _dimension(u: str) -> str:
    return "temperature" if u in _TEMPERATURE else _LINEAR[u][0]


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    """Convert a value between units of length, mass or temperature.

    Args:
        value: The number to convert.
        from_unit: Unit of the value: m, km, cm, mi, ft, in (length); kg, g, lb, oz (mass); c, f, k (temperature).
        to_unit: Unit to convert to, of the same kind as from_unit.
    """
    src, dst = _unit(from_unit), _unit(to_unit)
    if _dimension(src) != _dimension(dst):
        raise ValueError(f"cannot convert {_dimension(src)} ({from_unit}) to {_dimension(dst)} ({to_unit})")
    if src in _TEMPERATURE:
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[src]
        if kelvin < 0:
            raise ValueError(f"{value} {from_unit} is below absolute zero")
        result = {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[dst]
    else:
        result = value * _LINEAR[src][1] / _LINEAR[dst][1]
    result = round(result, 6)
    if result == int(result) and abs(result) < 1e15:
        result = int(result)
    return {"value": value, "from_unit": src, "result": result, "to_unit": dst}


# --------------------------------------------------------------------------------------------------- the 8 tools
TOOL_NAMES = ("calculator", "list_files", "read_file", "write_file", "search_files", "current_time",
              "get_weather", "convert_units")


def demo_tools(workspace: str | Path) -> dict:
    """name -> Tool for every tool the demo model learned; the file tools bound to ``workspace``."""
    from fmoe.tools.builtin_calculator import calculator
    from fmoe.tools.builtin_files import workspace_tools
    from fmoe.tools.builtin_time import current_time

    tools = {t.name: t for t in workspace_tools(str(workspace))}
    tools.update(calculator=calculator, current_time=current_time, get_weather=get_weather,
                 convert_units=convert_units)
    return {n: tools[n] for n in TOOL_NAMES}


@lru_cache(maxsize=1)
def tool_schemas() -> dict[str, dict]:
    """name -> openai_schema() of every tool the demo model learned."""
    with tempfile.TemporaryDirectory() as ws:
        return {n: t.openai_schema() for n, t in demo_tools(ws).items()}


def fake_time(tz: str, seed: int = 0) -> str:
    """A seeded instant in 2025, formatted exactly as the real current_time tool formats the clock (ValueError for
    an unknown zone, as the real tool)."""
    from datetime import datetime, timezone

    from fmoe.tools.builtin_time import _zone

    zone = _zone(tz)
    t = 1735689600 + (zlib.crc32(f"{seed}/{tz}".encode()) % (365 * 86400))
    now = datetime.fromtimestamp(t, timezone.utc).astimezone(zone)
    return f"{now.isoformat()} ({now.strftime('%A')}, {now.tzname()})"


def seeded_clock(seed: int = 0):
    """A ``current_time`` tool with the real one's schema that answers :func:`fake_time` (reproducible runs)."""
    from fmoe.tools.builtin_time import current_time

    def clock(timezone: str = "UTC") -> str:
        return fake_time(timezone, seed)

    clock.__doc__ = current_time.fn.__doc__
    return tool(clock, name="current_time")


def demo_registry(workspace: str | Path, time_seed: int = 0):
    """A ToolRegistry of the 8 demo tools for one conversation (file tools in ``workspace``, a seeded clock)."""
    from fmoe.tools.registry import ToolRegistry

    reg = ToolRegistry()
    for name, t in demo_tools(workspace).items():
        reg.add(seeded_clock(time_seed) if name == "current_time" else t)
    return reg
