"""pluggy markers and the hook specifications plugins implement."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookspec", "hookimpl", "AutoTLSpec"]

PROJECT = "automl_tl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class AutoTLSpec:
    """Hook specifications. Plugins implement any subset, as module functions or methods."""

    @hookspec
    def register_backbones(self, register):
        """Register backbones: call register(BackboneSpec(...)) once per backbone."""

    @hookspec
    def register_strategies(self, register):
        """Register strategies: call register(StrategySpec(...)) once per strategy."""

    @hookspec
    def register_commands(self, cli):
        """Add click commands to the `automl-tl` group: cli.add_command(...) or @cli.command()."""

    @hookspec(firstresult=True)
    def select_strategy(self, profile):
        """Return a registered strategy name for this DatasetProfile to override the planner,
        or None to leave the decision to it."""
