"""{{name}}: a lifehook hook component in Python.

lifehook calls `run` once per attempt with the phase, the step's name, the
attempt number and the milliseconds left; it returns a one-line summary, or
raises `Err(Failure(...))` saying whether trying again could help. The
step's `[config]` table is read with `store.get`. The contract is in
`wit/hook.wit`; for HTTP, build against the `hook-http` world instead (it
adds `wasi:http/outgoing-handler`).
"""

import componentize_py_types
import wit_world
from wit_world.imports import log, store
from wit_world.imports.types import Failure, Invocation


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: Invocation) -> str:
        who = store.get("who")
        if who is None:
            raise componentize_py_types.Err(
                Failure(
                    message="missing config key `who`: set it in the step's [config]",
                    retryable=False,
                    retry_after_ms=None,
                )
            )
        log.emit(log.Level.INFO, f"{invocation.time_left_ms} ms left")
        return (
            f"said hello to {who} from step {invocation.step} "
            f"(attempt {invocation.attempt}/{invocation.max_attempts})"
        )
