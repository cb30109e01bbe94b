"""The names of the skip term's shapes, torch-free: the CLI builds `--skip-form` from them before torch loads."""

from typing import Literal

SkipForm = Literal["full", "lowrank", "diagonal"]
SKIP_FORMS = ("full", "lowrank", "diagonal")  # == get_args(SkipForm)
