"""The command-line apps: `purerl-train` (train.py, Hydra), `purerl-eval` (evaluate.py),
`purerl-analyze` (analyze.py) and `purerl-memory` (memory.py). They sit on top of the library,
`analysis/` and `conf/`; nothing in `purerl` outside this package imports them."""
