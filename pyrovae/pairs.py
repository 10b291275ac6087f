"""Finding model/guide pairs: bundled ones by name, a user's as ``path/to/file.py:ClassName``.

A pair is an ``nn.Module`` with methods ``model(x, y=None)`` and ``guide(x, y=None)``.
Bundled pairs in :mod:`pyrovae.models` put themselves in the registry with
:func:`register`; this module imports that package by name only when asked, so the
machinery never depends on a particular model.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from torch import nn

from pyrovae.errors import UsageError, brief

__all__ = ["register", "bundled", "resolve", "build", "spec_of", "parse_model_args", "parse_model_options"]

T = TypeVar("T", bound=type)
_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a pair available to the CLI as ``name``."""

    def add(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"two pairs registered as {name!r}: {_REGISTRY[name]} and {cls}")
        _REGISTRY[name] = cls
        return cls

    return add


MAIN = "__main__"  # how spec_of names the module of a class defined in the running script


def bundled() -> dict[str, type[nn.Module]]:
    """The registered pairs by name (importing :mod:`pyrovae.models` registers the bundled ones)."""
    importlib.import_module("pyrovae.models")
    return dict(sorted(_REGISTRY.items()))


def _check_pair_class(cls: Any, where: str) -> type[nn.Module]:
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UsageError(f"{where} is not an nn.Module subclass; a pair is an nn.Module with model() and guide()")
    missing = [m for m in ("model", "guide") if not callable(getattr(cls, m, None))]
    if missing:
        raise UsageError(f"{where} has no {' or '.join(missing)} method; a pair needs model(x, y=None) and guide(x, y=None)")
    return cls


def _load_from_file(path: Path, class_name: str) -> type[nn.Module]:
    if not path.is_file():
        raise UsageError(f"no such file: {path} (expected path/to/file.py:ClassName)")
    module_name = f"pyrovae_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)  # as `python path.py` would: modules beside the file import
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        del sys.modules[module_name]
        raise UsageError(f"cannot import {path}: {err.msg} at line {err.lineno}") from err
    except ImportError as err:
        del sys.modules[module_name]
        raise UsageError(f"cannot import {path}: {brief(err)}") from err
    if not hasattr(module, class_name):
        found = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)]
        raise UsageError(f"{path} defines no {class_name!r}; nn.Module classes there: {', '.join(found) or 'none'}")
    return _check_pair_class(getattr(module, class_name), f"{path}:{class_name}")


def resolve(spec: str) -> type[nn.Module]:
    """The pair class named by ``spec``: a registered name or ``path/to/file.py:ClassName``."""
    if ":" in spec:
        path, class_name = spec.rsplit(":", 1)
        if path == MAIN:
            raise UsageError(f"the pair {class_name} was defined in the script or notebook that trained it, which "
                             f"pyrovae cannot import again: move the class to a file (path/to/file.py:{class_name}), "
                             f"or from Python rebuild it yourself: load_run(out, pair={class_name}(...))")
        return _load_from_file(Path(path), class_name)
    registry = bundled()
    if spec not in registry:
        raise UsageError(
            f"unknown model {spec!r}; valid names: {', '.join(registry)} "
            "(or path/to/file.py:ClassName for your own pair)"
        )
    return registry[spec]


def spec_of(pair: nn.Module) -> str:
    """How to name ``pair``'s class again: its registered name, else ``file.py:ClassName``, or
    ``__main__:ClassName`` for a class of the running script or notebook (importing a script
    again would run it again), which :func:`resolve` refuses."""
    cls = type(pair)
    for name, registered in bundled().items():
        if cls is registered:
            return name
    try:
        where = None if cls.__module__ == "__main__" else Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):  # defined by exec or in an interactive session
        where = None
    return f"{where or MAIN}:{cls.__qualname__}"


def build(spec: str, args: dict[str, Any] | None = None) -> nn.Module:
    """Construct the pair named ``spec`` with keyword arguments ``args``.

    Its ``hparams``, which runs record to rebuild it: ``args`` for a pair that keeps none; else
    the pair's own, completed by those of ``args`` that they leave out and that differ from the
    constructor's default (a new argument of a subclass of a bundled pair)."""
    cls = resolve(spec)
    args = dict(args or {})
    try:
        pair = cls(**args)
    except TypeError as err:
        raise UsageError(f"cannot build {spec} with {args}: {err}; its signature is {cls.__name__}{inspect.signature(cls)}") from err
    own = getattr(pair, "hparams", None)
    if not isinstance(own, dict):
        pair.hparams = args
        return pair
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    missing = {k: v for k, v in args.items() if k not in own and not (k in defaults and _same(defaults[k], v))}
    if missing:
        pair.hparams = {**own, **missing}
    return pair


def _same(default: Any, value: Any) -> bool:
    try:
        return bool(default == value) and type(default) is type(value)
    except Exception:  # noqa: BLE001 - values that do not compare (tensors) are kept
        return False


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; a value is JSON (``false``, ``[400, 400]``) or a Python
    literal (``False``, ``(400,)``) when it parses as one, else a string."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--arg takes KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            try:
                args[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                args[key] = value
    return args


def parse_model_options(tokens: list[str]) -> dict[str, Any]:
    """Turn ``--key value`` (or ``--key=value``) options that the command line does not know
    into constructor arguments: ``--task complete --quadrants 1`` gives
    ``{"task": "complete", "quadrants": 1}`` (dashes in keys become underscores)."""
    items, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise UsageError(f"unexpected argument {token!r}; a pair's own options are written --key value")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise UsageError(f"option --{key} needs a value (--{key} VALUE)")
            value, i = tokens[i + 1], i + 1
        items.append(f"{key.replace('-', '_')}={value}")
        i += 1
    return parse_model_args(items)
