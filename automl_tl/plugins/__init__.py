"""plugins: the pluggy hook specifications, the plugin manager (built-ins and the
`automl_tl` entry-point group, registered the same way), weight-file helpers for backbone
plugins, the backbone contract check, and the built-in plugins (builtin/).

May import: core, data (preprocessing types); the built-in strategies call train when they
run. Plugins themselves import `automl_tl.plugin`.
"""

from __future__ import annotations

from .manager import BUILTIN_PLUGINS, PluginSet, get_plugins, load_plugins

__all__ = ["get_plugins", "load_plugins", "PluginSet", "BUILTIN_PLUGINS"]
