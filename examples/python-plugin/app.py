"""A lifehook hook plugin in Python.

Build it into a component (from the repository root):

    pip install componentize-py==0.25.1
    componentize-py -d wit -w hook componentize -p examples/python-plugin app -o drain.wasm

then precompile it (Python components take 15-20 s to compile; do it once,
when building the image): `lifehook compile -f examples/python-plugin/lifehook.toml`.
"""

import componentize_py_types
import wit_world
from wit_world.imports import log, store
from wit_world.imports.types import Failure, Invocation, Phase


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: Invocation) -> str:
        """Runs once per attempt: a summary on success, Err(Failure) otherwise."""
        who = store.get("who")
        if who is None:
            raise componentize_py_types.Err(
                Failure(
                    message="missing config key `who`: set it in the step's [config]",
                    retryable=False,
                    retry_after_ms=None,
                )
            )
        phase = "pre-stop" if invocation.phase == Phase.PRE_STOP else "post-start"
        log.emit(log.Level.INFO, f"{phase}: step {invocation.step}, {invocation.time_left_ms} ms left")
        return f"said goodbye to {who} (attempt {invocation.attempt}/{invocation.max_attempts})"
