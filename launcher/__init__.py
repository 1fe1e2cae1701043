"""The launcher: the `fracture` command and the supervisor of `fracture up`.

The top layer, and the only code that may import `web`, `worker` and `trainer` (the layers are checked by
import-linter: `make lint`). Below it, those three import the core `fracture` and never each other.
"""
