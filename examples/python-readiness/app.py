"""wait-ready: a post-start step, in Python, that waits for the application
to answer.

It polls `url` (GET) until it answers 2xx, every `interval` (default 200ms),
for as long as the attempt has time (the invocation's `time-left-ms`, less a
margin), and fails retryably if it never does. Config keys:

- `url` (required): like "http://127.0.0.1:8080/ready"; grant its origin in
  `allow.http`.
- `interval`: milliseconds between polls (default 200).

Build it (from the repository root; `cargo xtask test` does this for you):

    pip install componentize-py==0.25.1
    componentize-py -d wit -w hook-http componentize -p examples/python-readiness app -o wait_ready.wasm

The `hook-http` world is the `hook` world plus `wasi:http/outgoing-handler`,
which Python reaches through generated bindings. Precompile it when
building the image: a Python component takes seconds to compile.
"""

import time

import componentize_py_types
from componentize_py_types import Err, Ok
import wit_world
from wit_world.imports import log, outgoing_handler, poll, store
from wit_world.imports import wasi_http_types as http
from wit_world.imports.lifehook_hook_types import Failure, Invocation


def fail(message: str, retryable: bool) -> componentize_py_types.Err:
    return Err(Failure(message=message, retryable=retryable, retry_after_ms=None))


def status_of(url: str, timeout_ms: int) -> int:
    """One GET: the response's status, or raises Err(Failure)."""
    scheme_text, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if scheme_text not in ("http", "https") or not authority:
        raise fail(f"config key `url` = {url!r} is not an http(s) URL", False)
    request = http.OutgoingRequest(http.Fields())
    request.set_method(http.Method_Get())
    request.set_scheme(http.Scheme_Https() if scheme_text == "https" else http.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(slash + path if slash else "/")
    options = http.RequestOptions()
    nanos = max(timeout_ms, 1) * 1_000_000
    options.set_connect_timeout(nanos)
    options.set_first_byte_timeout(nanos)
    try:
        future = outgoing_handler.handle(request, options)
    except Err as e:
        raise refusal(url, e.value)
    poll.poll([future.subscribe()])
    result = future.get()
    if isinstance(result, Ok) and isinstance(result.value, Ok):
        response = result.value.value
        return response.status()
    error = result.value.value if isinstance(result, Ok) else None
    raise refusal(url, error)


def refusal(url: str, error) -> componentize_py_types.Err:
    if isinstance(error, http.ErrorCode_HttpRequestDenied):
        return fail(f"GET {url} was denied: grant its origin in allow.http", False)
    name = type(error).__name__.replace("ErrorCode_", "") if error is not None else "no response"
    return fail(f"GET {url} failed: {name}", True)


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: Invocation) -> str:
        url = store.get("url")
        if url is None:
            raise fail("missing config key `url`: set it in the step's [config]", False)
        interval = int(store.get("interval") or "200")
        # Stop polling with time to spare for the report.
        deadline = time.monotonic() + max(invocation.time_left_ms - 200, 0) / 1000
        polls, last = 0, "no answer"
        while True:
            polls += 1
            left_ms = int((deadline - time.monotonic()) * 1000)
            try:
                status = status_of(url, max(min(left_ms, 2000), 1))
                if 200 <= status < 300:
                    return f"{url} answered {status} after {polls} polls"
                last = f"answered {status}"
            except Err as e:
                if not e.value.retryable:
                    raise
                last = e.value.message
            if time.monotonic() + interval / 1000 >= deadline:
                raise fail(f"{url} was not ready after {polls} polls: {last}", True)
            log.emit(log.Level.DEBUG, f"poll {polls}: {last}")
            time.sleep(interval / 1000)
