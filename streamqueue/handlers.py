"""Find a job handler from a ``package.module:function`` string (the worker's argument)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from streamqueue.errors import ConfigurationError
from streamqueue.tasks import Tasks

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTRIBUTE = _MODULE  # "function" or "Class.method": the same dotted-name shape


class HandlerNotFound(ConfigurationError):
    """The handler spec is malformed, its module does not import, or it names no callable."""


def load_handler(spec: str) -> Callable[..., object]:
    """Import ``package.module:function`` (or ``module:Object.attr``) and return the callable."""
    target = load_target(spec)
    if isinstance(target, Tasks):
        raise HandlerNotFound(f"handler {spec!r} is a task registry, not a callable: "
                              "run it with `streamqueue worker`")
    return target


def load_target(spec: str) -> Callable[..., object] | Tasks[Any]:
    """Import ``package.module:function`` and return the callable or task registry it names.

    Every failure raises ``HandlerNotFound`` with a one-line message saying what
    was wrong: the shape of the spec, a module that is missing or fails to
    import (with the error it raised), a missing attribute, or one that is not
    callable.
    """
    module_name, sep, attr_path = spec.strip().partition(":")
    if not sep or not _MODULE.match(module_name) or not _ATTRIBUTE.match(attr_path):
        hint = ""
        if not sep and "." in spec:
            head, _, tail = spec.strip().rpartition(".")
            hint = f" (did you mean {head}:{tail}?)"
        raise HandlerNotFound(
            f"handler {spec!r} is not of the form package.module:function{hint}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name
                                     or module_name.startswith(exc.name + ".")):
            raise HandlerNotFound(
                f"handler module {module_name!r} not found (is it on PYTHONPATH, or is the "
                "working directory its parent?)"
            ) from exc
        raise HandlerNotFound(
            f"importing handler module {module_name!r} failed: {_one_line(exc)}"
        ) from exc
    except Exception as exc:
        raise HandlerNotFound(
            f"importing handler module {module_name!r} failed: {_one_line(exc)}"
        ) from exc
    target: object = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerNotFound(
                f"handler module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if isinstance(target, Tasks):
        return target
    if not callable(target):
        raise HandlerNotFound(
            f"handler {spec!r} is a {type(target).__name__}, not a callable"
        )
    return target


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
