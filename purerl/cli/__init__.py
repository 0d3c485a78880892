"""The command-line apps: `purerl-train` (train.py, Hydra), `purerl-eval` (evaluate.py),
`purerl-analyze` (analyze.py) and `purerl-memory` (memory.py). They sit on top of the library,
`analysis/` and `conf/`; nothing in `purerl` outside this package imports them."""

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
