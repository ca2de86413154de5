"""Built-in experiments: one module per paper (or demo).

Each module calls ``lazylab.lab.registry.register(Experiment(...))`` at import time. The registry
imports every (non-underscore) module of this package on first lookup, so adding a file here is
all it takes to add an experiment to ``lazylab list``.
"""
