"""Old module paths for the classes Tune pickles with an experiment (tuner.pkl, the searcher's
and the callbacks' state): an experiment started before the package layout (tuning/searcher.py,
tuning/intensify.py, ...) names them there, and a resume unpickles it."""
from __future__ import annotations

import sys
import types

OLD = {  # old module -> the modules that now hold its classes
    "tuning.searcher": ("tuning.search.searcher",),
    "tuning.intensify": ("tuning.search.stage", "tuning.search.scheduler", "tuning.selection"),
    "tuning.trainable": ("tuning.search.trainable", "tuning.search.tuner"),
    "tuning.retention": ("tuning.search.retention",),
    "tuning.progress": ("tuning.search.progress",),
}


def alias_old_modules() -> None:
    """Register each old module name, holding the names of the modules that replaced it."""
    import importlib

    for old, new in OLD.items():
        if old in sys.modules:
            continue
        alias = types.ModuleType(old)
        for module in new:
            alias.__dict__.update({k: v for k, v in vars(importlib.import_module(module)).items()
                                   if not k.startswith("__")})
        sys.modules[old] = alias
