"""Plugin manager: built-in plugins and `automl_tl` entry points, registered the same way."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from .errors import BackboneError
from .hookspecs import PROJECT, AutoTLSpec

__all__ = ["PluginSet", "get_plugins", "BUILTIN_PLUGINS"]

# Module paths of the built-in plugins; the same modules are also declared as
# entry points in pyproject.toml, and an entry point of the same name is skipped.
BUILTIN_PLUGINS = {"efficientnet_lite": "automl_tl.default_plugins.efficientnet_lite"}


@dataclass
class PluginSet:
    """Loaded plugins, what they registered, and the plugins that failed to load."""

    manager: pluggy.PluginManager
    backbones: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)
    _owner: dict = field(default_factory=dict)

    def _register_backbone(self, plugin_name: str, spec) -> None:
        from .backbone import BackboneSpec

        if not isinstance(spec, BackboneSpec):
            raise TypeError(f"plugin {plugin_name} registered {spec!r}, not a BackboneSpec")
        if spec.name in self.backbones:
            raise ValueError(
                f"backbone '{spec.name}' is registered by both plugin "
                f"{self._owner[spec.name]} and plugin {plugin_name}"
            )
        self.backbones[spec.name] = spec
        self._owner[spec.name] = plugin_name

    def collect(self) -> None:
        """Call every plugin's register_backbones; a failing plugin is recorded, not fatal."""
        for impl in self.manager.hook.register_backbones.get_hookimpls():
            name = impl.plugin_name
            try:
                impl.function(register=functools.partial(self._register_backbone, name))
            except Exception as e:  # a broken plugin must not take the others down
                self.failures[name] = f"{type(e).__name__}: {e}"

    def backbone(self, name: str):
        if name not in self.backbones:
            known = ", ".join(sorted(self.backbones)) or "none"
            raise BackboneError(f"unknown backbone '{name}'; available: {known}")
        return self.backbones[name]


def _load(manager: pluggy.PluginManager, failures: dict) -> None:
    for name, module in BUILTIN_PLUGINS.items():
        manager.register(importlib.import_module(module), name=name)
    for ep in metadata.entry_points(group=PROJECT):
        if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
            continue
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception as e:
            failures[ep.name] = f"{type(e).__name__}: {e}"


@functools.lru_cache(maxsize=1)
def get_plugins() -> PluginSet:
    """The process-wide plugin set (loaded once)."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(AutoTLSpec)
    failures: dict = {}
    _load(manager, failures)
    manager.check_pending()
    plugins = PluginSet(manager, failures=failures)
    plugins.collect()
    return plugins
