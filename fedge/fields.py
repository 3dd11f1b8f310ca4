"""Flat kebab-case mappings → dataclasses: the one settings loader, with one rule for unknown keys.

fedge reads settings from flat key/value mappings in three places: the TOML files of the server
and the daemon (``[server]``/``[edge]``, :mod:`fedge.config`), Flower's ``run_config`` on the
server (:class:`fedge.server.run_settings.RunSettings`) and the ``ConfigRecord`` a ClientApp
receives (:class:`fedge.tasks.settings.TrainSettings`). Each maps ``some-key`` to the field
``some_key`` and checks the value against the field's annotation (``int`` where an ``int`` is
expected, ints accepted for floats, ``X | None`` accepts ``X``).

The rule for a key that names no field: it is an error, with the closest known key as a
suggestion, unless the caller names it as read by another component (``others``). A typo in a
config file or a ``--set`` must never be silently ignored — on a device nobody is watching it
would train with a default nobody chose. A mapping that several readers share is validated
once, as a whole, by its owner (the run config by ``RunSettings``, which knows every key of
fedge's ServerApp); a reader of a part of it (the ClientApp) takes its own keys with
:func:`pick`.

Fields declared with ``metadata={"config": False}`` (or ``init=False``) are not keys at all.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from fedge.errors import FedgeError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    T = TypeVar("T", bound=DataclassInstance)
else:
    T = TypeVar("T")


def keys_of(cls: type[DataclassInstance]) -> frozenset[str]:
    """The kebab-case keys that set fields of dataclass ``cls``."""
    return frozenset(_fields(cls))


def pick(mapping: Mapping[str, Any], cls: type[DataclassInstance]) -> dict[str, Any]:
    """The entries of ``mapping`` that set fields of ``cls``.

    Only for a reader of part of a mapping whose owner validates it as a whole (see the module
    docstring); everyone else loads with :func:`load`, which refuses unknown keys.
    """
    keys = keys_of(cls)
    return {key: value for key, value in mapping.items() if key in keys}


def load(
    cls: type[T],
    mapping: Mapping[str, Any],
    source: str,
    *,
    others: Collection[str] = (),
    aliases: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from ``mapping``; missing keys take the field defaults.

    Parameters
    ----------
    cls : dataclass type
        What to build; its ``__post_init__`` validates the values.
    mapping : Mapping[str, Any]
        Kebab-case key → value.
    source : str
        Where the mapping came from, for messages (``"run config"``, a file path).
    others : Collection[str]
        Keys other components read from the same mapping: neither read nor refused.
    aliases : Mapping[str, str]
        Unknown key → the known key to suggest for it, where spelling does not find it
        (``rounds`` → ``num-server-rounds``).

    Raises
    ------
    FedgeError
        A key that names no field and is not in ``others`` (the hint suggests the closest known
        key), or a value of the wrong type.
    """
    fields = _fields(cls)
    check_keys(mapping, fields.keys() | set(others), source, aliases)
    hints = typing.get_type_hints(cls)
    values = {
        field.name: _coerce(mapping[key], hints[field.name], key, source)
        for key, field in fields.items()
        if key in mapping
    }
    return cls(**values)


def check_keys(
    mapping: Mapping[str, Any], known: Collection[str], source: str, aliases: Mapping[str, str] | None = None
) -> None:
    """Raise ``FedgeError`` for the first key of ``mapping`` not in ``known``."""
    for key in mapping:
        if key not in known:
            alias = (aliases or {}).get(key)
            close = [alias] if alias else difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
            raise FedgeError(f"unknown key '{key}' in {source}", hint)


def _fields(cls: type[DataclassInstance]) -> dict[str, dataclasses.Field[Any]]:
    return {
        f.name.replace("_", "-"): f
        for f in dataclasses.fields(cls)
        if f.init and f.metadata.get("config", True)
    }


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    allowed = (
        [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, types.UnionType)
        else [annotation]
    )
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is int and isinstance(value, int):
            return value
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is dict and isinstance(value, dict):
            return value
        if typing.get_origin(kind) is list and isinstance(value, list):
            if all(isinstance(v, str) for v in value):  # list[str] (a daemon's tags): the only list kind
                return list(value)
    names = " or ".join(getattr(typing.get_origin(a) or a, "__name__", str(a)) for a in allowed)
    raise FedgeError(f"'{key}' in {source} must be {names}, got {value!r}", f"fix the type of '{key}'")
