"""The part of EventBridge that deploy/'s template relies on, written from its documentation: event pattern
matching (exact values, prefix, wildcard, anything-but with a value, a list or a prefix, exists, $or) and the
input transformer (InputPathsMap with $.a.b paths, an InputTemplate with <placeholders>).

Semantics kept from EventBridge: the fields of a pattern are ANDed, the values listed for one field are ORed;
a field the event lacks matches only ``{"exists": false}``; an array in the event matches when any element
does. Syntax outside that subset raises NotImplementedError, so the tests cannot pass on a pattern they do not
understand."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    for key, expected in pattern.items():
        if key == "$or":
            if not any(matches(branch, event) for branch in expected):
                return False
            continue
        value = event.get(key, _MISSING) if isinstance(event, Mapping) else _MISSING
        if isinstance(expected, Mapping):
            if not isinstance(value, Mapping) or not matches(expected, value):
                return False
        elif isinstance(expected, list):
            if not _field_matches(expected, value):
                return False
        else:
            raise NotImplementedError(
                f"pattern field {key!r}: expected a list or an object, got {expected!r}"
            )
    return True


def _field_matches(matchers: list[Any], value: Any) -> bool:
    if value is _MISSING:
        return any(isinstance(m, Mapping) and m.get("exists") is False for m in matchers)
    values = value if isinstance(value, list) else [value]
    return any(_leaf(m, v) for m in matchers for v in values)


def _leaf(matcher: Any, value: Any) -> bool:
    if matcher is None or isinstance(matcher, str | int | float | bool):
        return bool(matcher == value and type(matcher) is type(value))
    if not isinstance(matcher, Mapping) or len(matcher) != 1:
        raise NotImplementedError(f"unsupported matcher {matcher!r}")
    (op, arg), *_ = matcher.items()
    if op == "exists":
        return arg is True  # the field is present
    if op == "prefix" and isinstance(arg, str):
        return isinstance(value, str) and value.startswith(arg)
    if op == "wildcard" and isinstance(arg, str):
        return isinstance(value, str) and wildcard_regex(arg).fullmatch(value) is not None
    if op == "anything-but":
        if isinstance(arg, str | int | float):
            return bool(value != arg)
        if isinstance(arg, list) and all(isinstance(x, str) for x in arg):
            return value not in arg
        if isinstance(arg, Mapping) and set(arg) == {"prefix"} and isinstance(arg["prefix"], str):
            return not (isinstance(value, str) and value.startswith(arg["prefix"]))
    raise NotImplementedError(f"unsupported matcher {matcher!r}")


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """EventBridge wildcard: ``*`` is any run of characters (also none), ``\\*`` a literal star."""
    if "**" in pattern.replace("\\*", ""):
        raise ValueError(f"wildcard {pattern!r}: consecutive wildcard characters are not allowed")
    parts = re.split(r"(\\\*|\\\\|\*)", pattern)
    regex = "".join(
        ".*"
        if p == "*"
        else re.escape("*")
        if p == "\\*"
        else re.escape("\\")
        if p == "\\\\"
        else re.escape(p)
        for p in parts
    )
    return re.compile(regex, re.DOTALL)


def _path(event: Mapping[str, Any], path: str) -> Any:
    if path != "$" and not path.startswith("$."):
        raise NotImplementedError(f"InputPathsMap path {path!r}")
    value: Any = event
    for part in path.split(".")[1:]:
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"{path}: the event has no {part!r}")
        value = value[part]
    return value


def transform(input_transformer: Mapping[str, Any], event: Mapping[str, Any]) -> Any:
    """What the target receives: the InputTemplate with each <name> replaced by the value at its path.

    Inside a JSON string a placeholder becomes the value's text (JSON-escaped); outside, the value as JSON."""
    values = {name: _path(event, path) for name, path in input_transformer["InputPathsMap"].items()}
    template: str = input_transformer["InputTemplate"]
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "<":
            end = template.find(">", i)
            name = template[i + 1 : end] if end > 0 else ""
            if name in values:
                as_json = json.dumps(values[name])
                if in_string:
                    as_json = as_json[1:-1] if isinstance(values[name], str) else as_json.replace('"', '\\"')
                out.append(as_json)
                i = end + 1
                continue
        if ch == '"' and (i == 0 or template[i - 1] != "\\"):
            in_string = not in_string
        out.append(ch)
        i += 1
    return json.loads("".join(out))
