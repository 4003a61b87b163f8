"""Every key of a pydantic schema, with its type, default, description and variable.

The settings (:mod:`core.settings`) and the model manifest (:mod:`models.manifest`) are
pydantic models whose fields are documented by ``#:`` comments above them (Sphinx's
convention) and whose classes are documented by their docstrings. :func:`sections` walks
such a model, nested models included, into one :class:`Section` per model and one
:class:`Key` per field, so that the reference pages are generated from the schema itself.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from pacs_ai.docs_gen.markdown import cell, docstring

#: A placeholder for a model's name in a type, replaced by a link once every section
#: (and so every anchor) is known.
_MODEL_REF = "\x00{}\x00"
_MODEL_REF_RE = re.compile("\x00([^\x00]+)\x00")

_BASIC_NAMES: dict[Any, str] = {
    str: "text",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret text",
    type(None): "null",
    Any: "any",
}


@dataclass(frozen=True)
class Key:
    """One key of the schema."""

    #: ``node.tls.certificate``; ``[]`` marks a list item, ``<name>`` a mapping key.
    path: str
    type: str
    default: str
    #: The environment variable that sets it, or "" where one variable cannot.
    env: str
    description: str


@dataclass(frozen=True)
class Section:
    """One model of the schema: where it sits, what it is, and its keys."""

    path: str
    #: The value of the discriminating ``type`` key for one of several variants.
    variant: str
    anchor: str
    doc: str
    keys: tuple[Key, ...]
    model: type[BaseModel]

    @property
    def title(self) -> str:
        name = f"`{self.path}`" if self.path else "Top level"
        return f"{name} (`{self.variant}`)" if self.variant else name


def sections(root: type[BaseModel], *, env_prefix: str | None = None) -> list[Section]:
    """Every model reachable from ``root``, each once, depth first in field order.

    ``env_prefix`` (``PACS_AI_``) fills :attr:`Key.env`: the prefix and the key path in
    upper case, nested keys joined by ``__``; keys inside list items have none (the whole
    list is one variable).
    """
    found: list[Section] = []
    anchors: dict[type[BaseModel], str] = {}
    _walk(root, "", variant="", env_prefix=env_prefix, found=found, anchors=anchors)
    return [_linked(section, anchors) for section in found]


def _walk(
    model: type[BaseModel],
    path: str,
    *,
    variant: str,
    env_prefix: str | None,
    found: list[Section],
    anchors: dict[type[BaseModel], str],
) -> None:
    anchor = _slug(f"{path or 'top-level'} {variant}")
    anchors.setdefault(model, anchor)
    comments = field_comments(model)
    keys: list[Key] = []
    nested: list[tuple[type[BaseModel], str, str]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        full = f"{path}.{key}" if path else key
        description = (
            comments.get(name) or field.description or _alias_comment(model, field.annotation)
        )
        for child, suffix, tag in _models(field.annotation):
            if not description and not suffix:
                description = (child.__doc__ or "").split("\n\n")[0]
            if child not in anchors:
                nested.append((child, full + suffix, tag))
                anchors[child] = ""  # claimed: documented under this path
        keys.append(
            Key(
                path=full,
                type=describe(field.annotation, field.metadata),
                default=_default(field),
                env=_env_name(full, env_prefix),
                description=cell(description),
            )
        )
    found.append(
        Section(
            path=path,
            variant=variant,
            anchor=anchor,
            doc=docstring(model.__doc__) if model.__doc__ else "",
            keys=tuple(keys),
            model=model,
        )
    )
    for child, child_path, tag in nested:
        anchors.pop(child)
        _walk(child, child_path, variant=tag, env_prefix=env_prefix, found=found, anchors=anchors)


def _linked(section: Section, anchors: dict[type[BaseModel], str]) -> Section:
    by_name = {model.__qualname__: anchor for model, anchor in anchors.items()}

    def link(match: re.Match[str]) -> str:
        return f"[{match.group(1)}](#{by_name[match.group(1)]})"

    keys = tuple(
        Key(k.path, _MODEL_REF_RE.sub(link, k.type), k.default, k.env, k.description)
        for k in section.keys
    )
    return Section(section.path, section.variant, section.anchor, section.doc, keys, section.model)


def all_key_paths(root: type[BaseModel]) -> list[str]:
    """Every key path :func:`sections` documents (for the tests)."""
    return [key.path for section in sections(root) for key in section.keys]


# --- comments ------------------------------------------------------------------------


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comment lines above each field, for ``model`` and its bases."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls is BaseModel or not issubclass(cls, BaseModel):
            continue
        found.update(class_comments(cls))
    return found


@cache
def class_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each name assigned in the body of ``cls``."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    found: dict[str, str] = {}
    for statement in body:
        target = _assigned_name(statement)
        if target is None:
            continue
        found[target] = _comment_above(lines, statement.lineno - 1)
    return {name: text for name, text in found.items() if text}


def _alias_comment(model: type[BaseModel], annotation: Any) -> str:
    """The ``#:`` comment of a module-level type alias the field is declared with
    (``seg: SegEncoding``, the alias documented where it is defined)."""
    module = sys.modules[model.__module__]
    comments = module_comments(module)
    for name, value in vars(module).items():
        if name in comments and typing.get_origin(value) is not None and value == annotation:
            return comments[name]
    return ""


@cache
def module_comments(module: types.ModuleType) -> dict[str, str]:
    """The ``#:`` comment lines above each module-level assignment of ``module``."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    found: dict[str, str] = {}
    for statement in ast.parse(source).body:
        target = _assigned_name(statement)
        if target is not None:
            text = _comment_above(lines, statement.lineno - 1)
            if text:
                found[target] = text
    return found


def _assigned_name(statement: ast.stmt) -> str | None:
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target.id
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return statement.targets[0].id
    return None


def _comment_above(lines: list[str], index: int) -> str:
    """The ``#:`` lines right above line ``index`` (0-based), joined."""
    comment: list[str] = []
    row = index - 1
    while row >= 0 and lines[row].strip().startswith("#:"):
        comment.insert(0, lines[row].strip()[2:].strip())
        row -= 1
    return " ".join(comment)


# --- types and defaults ----------------------------------------------------------------


def describe(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A type as readers say it: ``integer (≥ 1, ≤ 65535)``, ``list of text``."""
    text = _describe(annotation)
    limits = _constraints(metadata or [])
    return f"{text} ({limits})" if limits else text


def _describe(annotation: Any) -> str:  # noqa: PLR0911 -- one case per kind of type
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner, *extra = args
        limits = _constraints([m for e in extra for m in _flatten(e)])
        text = _describe(inner)
        return f"{text} ({limits})" if limits else text
    if origin in (Union, types.UnionType):
        parts = [_describe(arg) for arg in args]
        if "integer" in parts and "number" in parts:
            parts.remove("integer")
        non_null = [p for p in parts if p != "null"]
        text = " or ".join(dict.fromkeys(non_null))
        return f"{text}, or null" if len(non_null) < len(parts) else text
    if origin is Literal:
        return "one of " + ", ".join(f"`{_value(a)}`" for a in args)
    if origin in (list, set, frozenset) or (origin is tuple and args[-1:] == (Ellipsis,)):
        return f"list of {_describe(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    if origin is dict:
        return f"mapping of {_describe(args[0])} to {_describe(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _MODEL_REF.format(annotation.__qualname__)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    return _BASIC_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _flatten(item: Any) -> list[Any]:
    return list(item.metadata) if isinstance(item, FieldInfo) else [item]


def _constraints(metadata: list[Any]) -> str:
    found: dict[str, Any] = {}
    for item in (m for entry in metadata for m in _flatten(entry)):
        for attribute in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attribute, None)
            if value is not None:
                found[attribute] = value
    parts: list[str] = []
    if "ge" in found and "le" in found:
        parts.append(f"{_value(found.pop('ge'))} to {_value(found.pop('le'))}")
    for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if attribute in found:
            parts.append(f"{symbol} {_value(found[attribute])}")
    shortest, longest = found.get("min_length"), found.get("max_length")
    if shortest and longest:
        parts.append(f"length {shortest} to {longest}")
    elif shortest:
        parts.append(f"length ≥ {shortest}")
    elif longest:
        parts.append(f"length ≤ {longest}")
    if "pattern" in found:
        parts.append(f"matching `{found['pattern']}`")
    return ", ".join(parts)


def _models(annotation: Any) -> list[tuple[type[BaseModel], str, str]]:  # noqa: PLR0911
    """The models inside a field's type: (model, path suffix, variant tag)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "", "")]
    if origin is typing.Annotated:
        inner, *extra = args
        tag = next((str(e.tag) for e in extra if type(e).__name__ == "Tag"), "")
        return [(m, s, t or tag) for m, s, t in _models(inner)]
    if origin in (Union, types.UnionType):
        found = [m for arg in args for m in _models(arg)]
        if len({m for m, _, _ in found}) < 2:
            return [(m, s, "") for m, s, _ in found]
        return [(m, s, _discriminator(m) or t) for m, s, t in found]
    if origin in (list, set, frozenset, tuple):
        return [(m, f"[]{s}", t) for arg in args if arg is not Ellipsis for m, s, t in _models(arg)]
    if origin is dict:
        placeholder = "<keyword>" if "keyword" in repr(args[0]).lower() else "<name>"
        return [(m, f".{placeholder}{s}", t) for m, s, t in _models(args[1])]
    return []


def _discriminator(model: type[BaseModel]) -> str:
    """``type: dimse``: the one-value Literal field that tells a variant of a union apart."""
    for name in ("type", "mode", "kind"):
        field = model.model_fields.get(name)
        if field is not None and typing.get_origin(field.annotation) is Literal:
            values = typing.get_args(field.annotation)
            if len(values) == 1:
                return f"{name}: {values[0]}"
    return ""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{_value(value)}`"


def _value(value: Any) -> str:  # noqa: PLR0911 -- one case per kind of value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else str(value)
    if isinstance(value, int | str | Path):
        return str(value) if str(value) else '""'
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _env_name(path: str, prefix: str | None) -> str:
    if prefix is None or "[]" in path:
        return ""
    return prefix + "__".join(part.upper() for part in path.split("."))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
