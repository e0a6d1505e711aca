"""Old module paths that users and plugins import, mapped to where the code lives now.

Before the package was split into rooms (see docs/ARCHITECTURE.md), every module sat at the
top level: `automl_tl.inference`, `automl_tl.hookspecs`, ... Those names keep working: an
import of one gives the module it moved to (the same object, so `isinstance` checks and
monkeypatching see one module). New code imports the new paths, or `automl_tl.plugin`.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import ModuleSpec

__all__ = ["MOVED", "install"]

# old module -> the module that answers for it now
MOVED = {
    "automl_tl.api": "automl_tl.estimator",
    "automl_tl.backbone": "automl_tl.plugin",
    "automl_tl.console": "automl_tl.core.console",
    "automl_tl.demo": "automl_tl.data.demo",
    "automl_tl.errors": "automl_tl.core.errors",
    "automl_tl.hookspecs": "automl_tl.plugin",
    "automl_tl.inference": "automl_tl.export.predictor",
    "automl_tl.preprocess": "automl_tl.data.preprocess",
    "automl_tl.strategy": "automl_tl.plugin",
}


class _MovedModules:
    """Answers an import of an old name with the module it moved to (a meta path finder and
    its loader; importlib.abc is not imported: it costs every command 7 ms)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return ModuleSpec(name, self)

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        # the import system sets __spec__ on what this returns; exec_module puts it back
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Put the old names on the import path (once per process)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
