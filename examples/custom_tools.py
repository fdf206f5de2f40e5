"""Custom tools for examples/custom.yaml: every @tool in this file is offered (tools: [{file: custom_tools.py}])."""
from __future__ import annotations

from fmoe.tools import tool

_STOCK = {"apples": 42, "pears": 7, "plums": 0}


@tool
def check_stock(item: str) -> dict:
    """Look up how many units of an item are in stock.

    Args:
        item: the item name, e.g. "apples".
    """
    key = item.strip().lower()
    if key not in _STOCK:
        raise ValueError(f"unknown item: {item} (known: {', '.join(_STOCK)})")
    return {"item": key, "in_stock": _STOCK[key]}


@tool
def reverse_text(text: str) -> str:
    """Reverse a piece of text.

    Args:
        text: the text to reverse.
    """
    return text[::-1]
