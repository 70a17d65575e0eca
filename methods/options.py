"""Plug-in options as one declared, validated model per plug-in.

Every strategy, learner and preparation step declares ``class Options(PluginOptions)``:
each option with its type, default, constraints and meaning. The model is
the single source of truth: :class:`Configurable` validates a plug-in's
``**options`` through it, the registry resolves the options the config hash
covers from it (``model_dump()``), and :func:`methods.registry.with_defaults`
derives a model with other defaults from it. A bad option fails at
construction -- before Ray starts -- with one message naming the plug-in,
the option, what it must be, and the value given.

Numbers keep the type they were given (``lr: 1`` stays an int): the config
hash of an existing sweep must not change because validation coerced it.
"""

from __future__ import annotations

import difflib
import inspect
import types
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictFloat, StrictInt, ValidationError, create_model
from pydantic_core import PydanticCustomError


class _Says(str):
    """What a value of an option type is, in words ("an integer"), for error messages."""


def _integer(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PydanticCustomError("option_type", "wrong type")
    return int(value)


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PydanticCustomError("option_type", "wrong type")
    return value.item() if isinstance(value, np.generic) else value


#: An integer option; bools and floats are refused (``2.5`` tokens is a typo, not 2).
Int = Annotated[int, BeforeValidator(_integer), _Says("an integer")]
#: A real option; an int stays an int, so the resolved options (and the config hash) are what the user wrote.
Number = Annotated[Union[StrictInt, StrictFloat], BeforeValidator(_number), _Says("a number")]


class PluginOptions(BaseModel):
    """Base of every plug-in's ``Options``: unknown options are refused, and options never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getitem__(self, key: str):
        """``options["width"]``: how preparation steps written before the models read their options."""
        return getattr(self, key)


# ------------------------------------------------------------------ which model a plug-in has


def signature_options(cls) -> type[PluginOptions] | None:
    """A model read off a hand-written constructor's keyword defaults (plug-ins written before ``Options``).

    The options are not typed (``Any``): the constructor still checks them, as it did.
    None when the constructor names no options (``**options`` only).
    """
    signature = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    params = [p for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not params or any(p.kind == p.VAR_KEYWORD for p in signature):
        return None
    fields = {p.name: (Any, ... if p.default is p.empty else p.default) for p in params}
    return create_model(f"{cls.__name__}Options", __base__=PluginOptions, **fields)


def options_model(cls) -> type[PluginOptions]:
    """The options model of a plug-in class: its ``Options``, else one read off its constructor."""
    model = getattr(cls, "Options", None)
    if isinstance(model, type) and issubclass(model, PluginOptions):
        return model
    return signature_options(cls) or PluginOptions


def label(cls) -> str:
    """How messages name a plug-in: ``acquisition strategy 'typiclust'`` (the registry sets kind and name)."""
    return f"{getattr(cls, 'kind', 'plug-in')} {getattr(cls, 'name', cls.__name__)!r}"


def validate_options(cls, options: dict) -> PluginOptions:
    """``options`` validated by ``cls``'s model; any problem is one ValueError naming the plug-in."""
    model = options_model(cls)
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        raise ValueError(unknown_options_message(label(cls), unknown, list(model.model_fields)))
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ValueError(explain(label(cls), exc, model, options)) from None


def unknown_options_message(owner: str, unknown: list[str], accepted: list[str]) -> str:
    hints = {u: difflib.get_close_matches(u, accepted, n=1) for u in unknown}
    said = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
    return f"{owner} got unknown option(s) {said}; accepted: {accepted or 'none'}"


# ------------------------------------------------------------------ messages


def explain(owner: str, exc: ValidationError, model: type[PluginOptions], options: dict) -> str:
    """``"<owner>: <option> must be <what the field declares>, got <value>"``, one clause per bad option.

    A validator's own ValueError is a whole sentence (it may involve several
    options) and is kept as it is.
    """
    problems: list[str] = []
    for err in exc.errors():
        loc = err["loc"]
        if err["type"] == "value_error" or not loc:
            text = str(err.get("ctx", {}).get("error", err["msg"]))
        elif err["type"] == "missing":
            text = f"{loc[0]} is required"
        else:
            option = str(loc[0])
            text = f"{option} must be {describe(model.model_fields[option])}, got {options.get(option)!r}"
        if text not in problems:
            problems.append(text)
    return f"{owner}: " + "; ".join(problems)


def describe(field) -> str:
    """What a field accepts, from its declaration: ``an integer >= 1 or None (None: no cap)``."""
    bounds = _bounds(field.metadata)
    says = next((m for m in field.metadata if isinstance(m, _Says)), None)  # a top-level Int or Number
    kinds = [says] if says else [_kind(a) for a in _alternatives(field.annotation)]
    text = " or ".join(_bounded(k, bounds) for k in kinds)
    return f"{text} ({field.description})" if field.description else text


def _alternatives(annotation) -> list:
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def _kind(annotation) -> str:
    if annotation is type(None):
        return "None"
    if get_origin(annotation) is Annotated:
        says = next((m for m in annotation.__metadata__ if isinstance(m, _Says)), None)
        return says or _kind(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return f"one of {list(get_args(annotation))}"
    names = {Any: "any value", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping", list: "a list"}
    return names.get(get_origin(annotation) or annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata) -> str:
    """``>= 1``, ``> 0``, ``in (0, 1]``: the numeric constraints of a field, or ``""``."""
    found = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    low = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    high = (found["le"], "]") if "le" in found else (found["lt"], ")") if "lt" in found else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[1] == ']' else '<'} {high[0]}"
    return ""


def _bounded(kind: str, bounds: str) -> str:
    if not bounds or kind not in ("an integer", "a number"):
        return kind
    return f"an integer {bounds}" if kind == "an integer" else bounds


# ------------------------------------------------------------------ the plug-in side


class Configurable:
    """A plug-in built from its ``Options``: ``Plugin(**options)`` validates, sets each option, then configures.

    ``self.options`` is the validated model; every option is also an
    attribute (``self.feature_space``). :meth:`configure` derives what the
    options imply (the inputs a feature space needs, a nested strategy, a
    training recipe). A subclass with a hand-written keyword constructor and
    no ``Options`` gets a model read off that constructor, so plug-ins
    written that way keep working.
    """

    kind: ClassVar[str] = "plug-in"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__ and "Options" not in cls.__dict__:
            cls.Options = signature_options(cls) or cls.Options

    def __init__(self, **options):
        self.options = validate_options(type(self), options)
        for key in type(self.options).model_fields:
            setattr(self, key, getattr(self.options, key))
        self.configure()

    def configure(self) -> None:
        """Derive state from the validated options; the default has none to derive."""
