"""NUL characters in JSON text: PostgreSQL cannot store "\\u0000" in text or jsonb, so a body
carrying one is refused at the door with a 400 naming where it is, instead of failing in the
database (a 500, or a write the recorder could never complete)."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def find_nul(value: Any, path: str = "") -> str | None:
    """The path of the first string (or object key) holding a NUL, e.g. `messages[0].content`."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return child.replace("\x00", "")
            found = find_nul(item, child)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def nul_message(path: str) -> str:
    return f"{path}: text must not contain NUL (\\u0000) characters."


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, refusing NUL characters anywhere in the document."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        path = find_nul(data)
        if path is not None:
            raise ParseError(nul_message(path))
        return data
