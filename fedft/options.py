"""Options tables of plugins: each plugin module declares its own typed options.

A plugin (a fine-tuning method, a strategy family, a Flower aggregator) that has settings
declares a frozen dataclass next to its code and registers it under the config section that
selects the plugin: ``register_options("method", "lora", LoraOptions)`` makes ``[method.lora]``
(``--set method.lora.rank=4``) a table validated by ``LoraOptions``. The config parser looks
tables up here, so adding a plugin with options touches only the plugin's module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

# section -> table name -> options dataclass
_TABLES: dict[str, dict[str, type]] = {}
# section -> selected plugin name -> table name (strategy variants share their family's table)
_SELECTED: dict[str, dict[str, str]] = {}

#: the options tables of a config section: ((table name, options instance), ...), sorted by name
PluginOptions = tuple[tuple[str, Any], ...]

# The packages whose modules register plugins; imported on the first look-up (not at import of
# fedft.config, which the plugin modules themselves import).
PLUGIN_PACKAGES = ("fedft.methods", "fedft.strategies", "fedft.federated.aggregators", "fedft.recipes",
                   "fedft.losses", "fedft.decoding", "fedft.evals")


def register_options(section: str, name: str, cls: type, selected_by: tuple[str, ...] = ()) -> None:
    """Declare ``[section.name]`` as the options table of plugin ``name`` (and of the plugins named
    in ``selected_by``, e.g. strategy variants); a second, different registration is an error."""
    table = _TABLES.setdefault(section, {})
    if name in table and table[name] is not cls:
        raise ValueError(f"options [{section}.{name}] are already registered by {table[name].__name__}")
    table[name] = cls
    for plugin in (name, *selected_by):
        _SELECTED.setdefault(section, {})[plugin] = name


def table_for(section: str, plugin: str) -> str | None:
    """The options table that plugin ``plugin`` reads (None: it has no options)."""
    load_plugins()
    return _SELECTED.get(section, {}).get(plugin)


def load_plugins() -> None:
    """Import every plugin package, so that every options table is registered."""
    for pkg in PLUGIN_PACKAGES:
        importlib.import_module(pkg)


def options_class(section: str, name: str) -> type | None:
    """The options dataclass of ``[section.name]``, or None when no plugin declares it."""
    load_plugins()
    return _TABLES.get(section, {}).get(name)


def option_names(section: str) -> list[str]:
    """The plugins of ``section`` that have an options table, sorted."""
    load_plugins()
    return sorted(_TABLES.get(section, {}))


def default_options(section: str, name: str) -> Any | None:
    """A default options instance for plugin ``name`` (None when it has no options)."""
    cls = options_class(section, name)
    return None if cls is None else cls()


def get_options(options: PluginOptions, section: str, plugin: str) -> Any:
    """The options plugin ``plugin`` reads: the configured table, else its defaults."""
    name = table_for(section, plugin) or plugin
    for key, value in options:
        if key == name:
            return value
    found = default_options(section, name)
    if found is None:
        raise KeyError(f"{plugin!r} has no options table in [{section}]")
    return found


def with_defaults(options: PluginOptions, section: str, plugins: list[str]) -> PluginOptions:
    """``options`` plus the default table of each selected plugin that has none, sorted by name."""
    have = dict(options)
    for plugin in plugins:
        name = table_for(section, plugin)
        if name is not None and name not in have:
            have[name] = default_options(section, name)
    return tuple(sorted(have.items()))


P = TypeVar("P", bound=type)


def plugin_registrar(registry: Any, section: str) -> Callable[[str, type | None], Callable[[P], P]]:
    """The class decorator factory of a plugin kind: ``register(name, options)`` sets the class's
    ``name`` and ``Options``, declares ``[section.name]`` when it has options, and adds the class
    to ``registry`` (a :class:`fedft.registry.Registry`)."""

    def register(name: str, options: type | None = None) -> Callable[[P], P]:
        def deco(cls: P) -> P:
            cls.name = name  # type: ignore[attr-defined]
            cls.Options = options  # type: ignore[attr-defined]
            if options is not None:
                register_options(section, name, options)
            return registry.register(name)(cls)

        return deco

    return register
