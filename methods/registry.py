"""Plug-ins register themselves by name; unknown names list the known ones.

A registry maps a name to a class whose options are a declared model
(``Options``, see :mod:`methods.options`). Options are validated through that
model, so a typo in a sweep config fails before any trial starts, with the
accepted options and the closest match.
"""

from __future__ import annotations

import difflib
from copy import copy
from typing import Callable, Generic, TypeVar

from pydantic import create_model

from .base import LEARNER_INPUTS, STRATEGY_INPUTS, check_declared
from .options import Configurable, PluginOptions, options_model, validate_options

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, inputs: frozenset[str] | None = None):
        self.kind = kind
        self.inputs = inputs  # the inputs its plug-ins may declare in `requires` (None: not checked)
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name, cls.kind = name, self.kind
            self._items[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        _load_builtin_plugins()
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        _load_builtin_plugins()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def options_model(self, name: str) -> type[PluginOptions]:
        return options_model(self.get(name))

    def resolve_options(self, name: str, options: dict) -> dict:
        """The options a plug-in will actually run with: its validated ``Options``, defaults filled in.

        These go into the trial's config hash, so changing a plug-in's default
        makes a new trial instead of silently reusing results of the old one.
        """
        return validate_options(self.get(name), options).model_dump()

    def create(self, name: str, **options) -> T:
        cls = self.get(name)
        validate_options(cls, options)  # also for plug-ins with a constructor of their own
        plugin = cls(**options)
        if self.inputs is not None:
            check_declared(f"{self.kind} {name!r}", plugin.requires, self.inputs)
        return plugin


ACQUISITIONS: Registry = Registry("acquisition strategy", STRATEGY_INPUTS)
ADAPTATIONS: Registry = Registry("adaptation learner", LEARNER_INPUTS)


def register_acquisition(name: str):
    return ACQUISITIONS.register(name)


def register_adaptation(name: str):
    return ADAPTATIONS.register(name)


_LOADED = False


def _load_builtin_plugins() -> None:
    """Import the shipped plug-in modules once (their decorators fill the registries)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import acquisition, adaptation, preparation  # noqa: F401


def load_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import user plug-in modules (dotted names or ``.py`` paths) so their decorators register them.

    Called by the driver and again inside every Ray task, because a worker
    process starts with only the built-in plug-ins registered.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    for module in modules:
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            name = plugin_module_name(path)
            if name in sys.modules:
                continue
            if not path.is_file():
                raise FileNotFoundError(f"plug-in file {path} does not exist")
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(module)


def plugin_module_name(path) -> str:
    """The module name a plug-in file is imported under: the same in every process.

    A digest of the resolved path, not Python's ``hash()`` (salted per
    process): Ray workers and a resumed driver must give the file the name
    its pickled predictors and round checkpoints (``module:qualname``) refer to.
    """
    import hashlib
    import re
    from pathlib import Path

    path = Path(path).expanduser().resolve()
    stem = re.sub(r"\W", "_", path.stem)
    return f"alvlm_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def with_defaults(**defaults):
    """Class decorator: the parent's options with some defaults changed (an ``Options`` subclass).

    Option resolution and so the config hash read the model, so they see the
    new defaults; a name the model does not declare is refused.
    """

    def deco(cls):
        model = options_model(cls)
        unknown = sorted(set(defaults) - set(model.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__}: no such constructor option(s) {unknown}")
        cls.Options = _with_defaults(model, defaults, cls.__name__)
        validate_options(cls, defaults)  # a bad default fails at import, not in the first trial
        if cls.__init__ is not Configurable.__init__:  # a hand-written constructor: hand it the defaults too
            parent_init = cls.__init__

            def __init__(self, **options):
                parent_init(self, **{**defaults, **options})

            cls.__init__ = __init__
        return cls

    return deco


def _with_defaults(model: type[PluginOptions], defaults: dict, owner: str) -> type[PluginOptions]:
    fields = {}
    for key, value in defaults.items():
        info = copy(model.model_fields[key])
        info.default = value
        fields[key] = (model.model_fields[key].annotation, info)
    return create_model(f"{owner}Options", __base__=model, __doc__=model.__doc__, **fields)
