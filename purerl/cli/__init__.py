"""The command-line apps: `purerl-train` (train.py, Hydra), `purerl-eval` (evaluate.py),
`purerl-analyze` (analyze.py) and `purerl-memory` (memory.py). They sit on top of the library,
`analysis/` and `conf/`; nothing in `purerl` outside this package imports them."""

import gc
import importlib
import importlib.util
import sys
import types

# gymnax imports seaborn and matplotlib.pyplot when it is imported, for render functions that a
# training job never calls: about a third of a job's start-up. The purerl-train program (not an
# import of its module) puts a stand-in for each in its place; the first use of one of its
# attributes imports the real module, and the stand-in then forwards to it. (The standard
# library's LazyLoader does not survive a second `import seaborn` on Python 3.11: the import
# system reads the module's `__spec__`, which loads it.)
DEFERRED_IMPORTS = ("seaborn", "matplotlib.pyplot")


class DeferredModule(types.ModuleType):
    """A module not imported until one of its attributes is used."""

    def __getattr__(self, attr: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def defer_imports(names: tuple[str, ...] = DEFERRED_IMPORTS) -> None:
    """Stand in for each module that is not imported yet (see DeferredModule)."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        module = DeferredModule(name)
        module.__spec__ = spec
        sys.modules[name] = module


def collect_garbage_less_often() -> None:
    """Freeze the objects alive now (the imported libraries: never garbage) and raise the cyclic
    collector's first threshold. Tracing a training program makes a few hundred thousand
    short-lived objects, and at the default thresholds the collector walks the libraries again and
    again: tracing the contract test's GRPO program takes 1.34 s instead of 1.75 s."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
