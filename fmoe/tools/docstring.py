"""Docstring parsing for tools: the description and per-argument docs.

Google style (``Args:`` / ``Arguments:`` / ``Parameters:`` sections, ``name (type): text`` entries with indented
continuation lines), NumPy style (``Parameters`` underlined with dashes, ``name : type`` then indented text) and
reST fields (``:param name: text``) are understood. The description is the text before the first section.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

_SECTIONS = {
    "args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "other parameters",
    "returns", "return", "yields", "yield", "raises", "raise", "examples", "example", "notes", "note",
    "attributes", "see also", "warnings", "warning", "warns", "todo", "references",
}
_ARG_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments",
                 "other parameters"}
_RETURN_SECTIONS = {"returns", "return", "yields", "yield"}

_GOOGLE_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*?)\s*:\s*$")
_GOOGLE_ENTRY = re.compile(r"^\**(\w+)\s*(?:\(([^)]*)\))?\s*:(?:\s+(.*))?$")
_NUMPY_ENTRY = re.compile(r"^\**(\w+)\s*(?::\s*(.*))?$")
_REST_PARAM = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_REST_OTHER = re.compile(r"^:(?:returns?|rtype|raises?|type|except)\b[^:]*:")


@dataclass
class Docstring:
    description: str = ""
    params: dict[str, str] = field(default_factory=dict)
    returns: str = ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _join(lines: list[str]) -> str:
    """Join continuation lines; keep blank-line paragraph breaks."""
    paras, cur = [], []
    for ln in lines:
        if ln.strip():
            cur.append(ln.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def _section_name(lines: list[str], i: int) -> tuple[str | None, int]:
    """If a section header starts at line i, return (lowercased name, number of header lines)."""
    line = lines[i]
    s = line.strip()
    m = _GOOGLE_HEADER.match(s)
    if m and m.group(1).lower() in _SECTIONS:
        return m.group(1).lower(), 1
    if s.lower() in _SECTIONS and i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]):
        return s.lower(), 2
    return None, 0


def parse_docstring(doc: str | None) -> Docstring:
    out = Docstring()
    if not doc:
        return out
    lines = inspect.cleandoc(doc).splitlines()
    # reST fields live anywhere after the description.
    desc_lines: list[str] = []
    i = 0
    n = len(lines)
    # 1) description: up to the first section header or reST field
    while i < n:
        name, _ = _section_name(lines, i)
        if name is not None or _REST_PARAM.match(lines[i].strip()) or _REST_OTHER.match(lines[i].strip()):
            break
        desc_lines.append(lines[i])
        i += 1
    out.description = _join(desc_lines)
    # 2) sections
    while i < n:
        s = lines[i].strip()
        m = _REST_PARAM.match(s)
        if m:
            pname, text = m.group(1), [m.group(2)]
            base = _indent(lines[i])
            i += 1
            while i < n and lines[i].strip() and _indent(lines[i]) > base and not lines[i].strip().startswith(":"):
                text.append(lines[i])
                i += 1
            out.params.setdefault(pname, _join(text))
            continue
        m = _REST_OTHER.match(s)
        if m:
            if s.startswith(":return"):
                out.returns = _join([s.split(":", 2)[2]])
            i += 1
            continue
        name, hdr = _section_name(lines, i)
        if name is None:
            i += 1
            continue
        header_indent = _indent(lines[i])
        numpy = hdr == 2
        i += hdr
        body: list[str] = []
        while i < n:
            if lines[i].strip():
                nxt, _ = _section_name(lines, i)
                if nxt is not None and _indent(lines[i]) <= header_indent:
                    break
                if not numpy and _indent(lines[i]) <= header_indent:
                    break
            body.append(lines[i])
            i += 1
        if name in _ARG_SECTIONS:
            out.params.update({k: v for k, v in _parse_entries(body, numpy).items() if k not in out.params})
        elif name in _RETURN_SECTIONS and not out.returns:
            out.returns = _join(body)
    return out


def _parse_entries(body: list[str], numpy: bool) -> dict[str, str]:
    nonblank = [ln for ln in body if ln.strip()]
    if not nonblank:
        return {}
    entry_indent = min(_indent(ln) for ln in nonblank)
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for ln in body:
        if ln.strip() and _indent(ln) == entry_indent:
            m = (_NUMPY_ENTRY if numpy else _GOOGLE_ENTRY).match(ln.strip())
            if m:
                current = []
                entries[m.group(1)] = current
                if not numpy and m.group(3):
                    current.append(m.group(3))
                continue
            current = None
            continue
        if current is not None:
            current.append(ln)
    return {k: _join(v) for k, v in entries.items()}
