"""Built-in ``current_time``: the current date and time in an IANA time zone (zoneinfo)."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fmoe.tools.decorator import tool


def _zone(name: str):
    key = name.strip() or "UTC"
    if key.upper() in ("UTC", "Z", "GMT"):
        key = "UTC"
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone: {name} (use an IANA name such as 'Europe/Paris')") from None


@tool
def current_time(timezone: str = "UTC") -> str:
    """Get the current date and time.

    Args:
        timezone: IANA time zone name, e.g. "UTC", "Europe/Paris" or "America/New_York".
    """
    now = datetime.now(_zone(timezone)).replace(microsecond=0)
    return f"{now.isoformat()} ({now.strftime('%A')}, {now.tzname()})"
