"""pluggy markers and the hook specifications plugins implement."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookspec", "hookimpl", "AutoTLSpec"]

PROJECT = "automl_tl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class AutoTLSpec:
    """Hook specifications. Each hook receives a `register` callback."""

    @hookspec
    def register_backbones(self, register):
        """Register backbones: call register(BackboneSpec(...)) once per backbone."""
