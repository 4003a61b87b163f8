"""Turn pydantic validation errors into one line per problem, each naming its key.

Used for every file a user writes: the configuration and model manifests.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


def describe(
    exc: ValidationError,
    root: type[BaseModel],
    *,
    sources: Mapping[str, str] | None = None,
    union_tags: frozenset[str] = frozenset(),
) -> list[str]:
    """One readable line per error: ``routes[0].models: List should have at least 1 item``.

    ``sources`` maps a key path to where its value came from (an environment variable).
    ``union_tags`` are the tags of discriminated unions, which pydantic puts in the error
    location but users never write (``destinations.pacs.dimse.port``).
    """
    lines: list[str] = []
    for error in exc.errors():
        # "[key]" marks an error about a mapping's key rather than its value.
        loc = tuple(
            part
            for i, part in enumerate(error["loc"])
            if (i < 2 or part not in union_tags) and part != "[key]"
        )
        error["loc"] = loc
        where = location(loc)
        if sources and where in sources:
            where = f"{where} (from {sources[where]})"
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key{_suggest(root, error['loc'])}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error" and not where:
            lines.extend(message.split("; "))
            continue
        if error["type"].endswith("_type") or error["type"] == "literal_error":
            message = f"{message}, got {error['input']!r}"
        lines.append(f"{where or '(top level)'}: {message}")
    return lines


def location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _suggest(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return ""
        if isinstance(part, int) or part not in model.model_fields:
            # An index into a list, or a key of a dict: stay on the element model.
            continue
        model = _element_model(model.model_fields[part].annotation)
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(known)})"


def _element_model(annotation: Any) -> type[BaseModel] | None:
    """The model in ``X``, ``list[X]``, ``dict[str, X]``, ``X | None``, ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None:
        return None
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset) or origin is typing.Annotated:
        candidates = args[:1]
    elif origin is dict:
        candidates = args[1:2]
    elif origin in (typing.Union, types.UnionType):
        candidates = args
    else:
        candidates = ()
    for candidate in candidates:
        found = _element_model(candidate)
        if found is not None:
            return found
    return None
