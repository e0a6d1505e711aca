"""Plugin manager: built-in plugins and `automl_tl` entry points, registered the same way."""

from __future__ import annotations

import functools
import importlib
import os
from importlib import metadata

import pluggy

from ..core.errors import AutoTLError, BackboneError
from .hookspecs import PROJECT, AutoTLSpec

__all__ = ["PluginSet", "get_plugins", "load_plugins", "BUILTIN_PLUGINS", "DISABLE_ENV", "ONLY_ENV"]

# Comma-separated plugin names: never load these / load only these.
DISABLE_ENV = "AUTOML_TL_DISABLE_PLUGINS"
ONLY_ENV = "AUTOML_TL_PLUGINS"

# Module paths of the built-in plugins; the same modules are also declared as
# entry points in pyproject.toml, and an entry point of the same name is skipped.
BUILTIN_PLUGINS = {
    "efficientnet_lite": "automl_tl.plugins.builtin.efficientnet_lite",
    "strategies": "automl_tl.plugins.builtin.strategies",
    "torchvision_backbones": "automl_tl.plugins.builtin.torchvision_backbones",
    "timm_backbones": "automl_tl.plugins.builtin.timm_backbones",
}


class PluginSet:
    """Loaded plugins, what they registered, and the plugins that failed to load.

    The register hooks run on first use of `backbones`, `strategies`, `owner` or
    `failures`, not at load: `automl-tl --help` needs only register_commands, and the
    built-in backbone tables are not worth importing torch for there."""

    def __init__(self, manager: pluggy.PluginManager, failures=None, versions=None):
        self.manager = manager
        self.versions: dict = versions if versions is not None else {}  # name -> version
        self._failures: dict = failures if failures is not None else {}
        self._backbones: dict = {}
        self._strategies: dict = {}
        self._owner: dict = {}  # (kind, name) -> plugin name
        self._collected = False

    @property
    def backbones(self) -> dict:
        self.collect()
        return self._backbones

    @property
    def strategies(self) -> dict:
        self.collect()
        return self._strategies

    @property
    def owner(self) -> dict:
        self.collect()
        return self._owner

    @property
    def failures(self) -> dict:
        """Plugin name -> why it failed (loading, a register hook, a later hook call)."""
        self.collect()
        return self._failures

    def _register(self, kind: str, spec_type: type, plugin_name: str, spec) -> None:
        """The `register` callback handed to plugins: validates and de-duplicates."""
        if not isinstance(spec, spec_type):
            raise TypeError(
                f"plugin {plugin_name} registered {spec!r}; expected a {spec_type.__name__}"
            )
        table = getattr(self, "_" + kind)
        if spec.name in table:
            raise ValueError(
                f"{kind[:-1]} '{spec.name}' is registered by both plugin "
                f"{self._owner[kind, spec.name]} and plugin {plugin_name}"
            )
        table[spec.name] = spec
        self._owner[kind, spec.name] = plugin_name

    def collect(self) -> None:
        """Call every plugin's register hooks once; a failing plugin is recorded, not fatal."""
        if self._collected:
            return
        self._collected = True
        from ..core.contract import BackboneSpec, StrategySpec

        for kind, hook, spec_type in (
            ("backbones", self.manager.hook.register_backbones, BackboneSpec),
            ("strategies", self.manager.hook.register_strategies, StrategySpec),
        ):
            for impl in hook.get_hookimpls():
                name = impl.plugin_name
                register = functools.partial(self._register, kind, spec_type, name)
                try:
                    impl.function(register=register)
                except Exception as e:  # a broken plugin must not take the others down
                    self._failures[name] = f"{type(e).__name__}: {e}"

    def backbone(self, name: str):
        if name not in self.backbones:
            known = ", ".join(sorted(self.backbones)) or "none"
            raise BackboneError(f"unknown backbone '{name}'; available: {known}")
        return self.backbones[name]

    def strategy(self, name: str):
        if name not in self.strategies:
            known = ", ".join(sorted(self.strategies)) or "none"
            raise AutoTLError(f"unknown strategy '{name}'; available: {known}")
        return self.strategies[name]

    def select_strategy(self, profile) -> tuple[str, str] | None:
        """First non-None answer of the select_strategy hooks (pluggy's order: last
        registered first), as (plugin name, strategy name)."""
        for impl in reversed(self.manager.hook.select_strategy.get_hookimpls()):
            try:
                answer = impl.function(profile=profile)
            except Exception as e:  # a broken hook is reported, the planner carries on
                self._failures[impl.plugin_name] = f"select_strategy: {type(e).__name__}: {e}"
                continue
            if answer is not None:
                return impl.plugin_name, answer
        return None

    def add_commands(self, cli) -> None:
        """Let every plugin add its click commands; a failing plugin is recorded."""
        for impl in self.manager.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as e:
                self._failures[impl.plugin_name] = f"register_commands: {type(e).__name__}: {e}"

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.manager.get_plugin(plugin_name)
        return sorted(c.name for c in self.manager.get_hookcallers(plugin) or [])


def _names(env: str) -> set[str] | None:
    value = os.environ.get(env, "").strip()
    return {n.strip() for n in value.split(",") if n.strip()} if value else None


def _wanted(name: str) -> bool:
    disabled, only = _names(DISABLE_ENV) or set(), _names(ONLY_ENV)
    return name not in disabled and (only is None or name in only)


def _load(manager: pluggy.PluginManager, failures: dict, versions: dict, extra: dict) -> None:
    from .. import __version__

    for name, module in {**BUILTIN_PLUGINS, **extra}.items():
        if _wanted(name):
            try:
                if isinstance(module, str):
                    module = importlib.import_module(module)
                manager.register(module, name=name)
                versions[name] = __version__
            except Exception as e:
                failures[name] = f"{type(e).__name__}: {e}"
    for ep in metadata.entry_points(group=PROJECT):
        if manager.get_plugin(ep.name) is not None or _name_taken(manager, ep.name):
            if ep.name in BUILTIN_PLUGINS and ep.value != BUILTIN_PLUGINS[ep.name]:
                failures[ep.name] = (
                    f"entry point {ep.name} = {ep.value} is skipped: a built-in plugin has "
                    "that name; rename the entry point"
                )
            continue
        if not _wanted(ep.name):
            continue
        try:
            manager.register(ep.load(), name=ep.name)
            versions[ep.name] = ep.dist.version if ep.dist else "?"
        except Exception as e:
            failures[ep.name] = f"{type(e).__name__}: {e}"


def _name_taken(manager: pluggy.PluginManager, name: str) -> bool:
    return manager.is_blocked(name) or name in BUILTIN_PLUGINS


def new_manager() -> pluggy.PluginManager:
    """A plugin manager with automl-tl's hook specifications and nothing registered."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(AutoTLSpec)
    return manager


@functools.lru_cache(maxsize=1)
def get_plugins() -> PluginSet:
    """The process-wide plugin set (loaded once; honours the two environment variables)."""
    return load_plugins()


def load_plugins(extra: dict | None = None) -> PluginSet:
    """Load built-in and entry-point plugins, plus `extra` {name: module or object}."""
    manager = new_manager()
    failures: dict = {}
    versions: dict = {}
    _load(manager, failures, versions, extra or {})
    while True:  # a misspelled hook disables its plugin, reported, and the rest go on
        try:
            manager.check_pending()
            break
        except pluggy.PluginValidationError as e:
            name = manager.get_name(e.plugin) or "?"
            failures[name] = f"unknown hook: {e}"
            manager.unregister(e.plugin)
    for name in sorted((_names(ONLY_ENV) or set()) - set(versions) - set(failures)):
        failures[name] = (
            f"not installed: {ONLY_ENV} names it, but there is no built-in plugin or "
            "`automl_tl` entry point of that name (`automl-tl plugins` lists what is)"
        )
    return PluginSet(manager, failures=failures, versions=versions)
