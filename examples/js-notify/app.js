// notify (JavaScript): a pre-stop step that tells a service this pod is
// going, with `fetch`. A 2xx succeeds; 408, 429 and 5xx, and a connection
// that fails, are retryable; other statuses, and a request the sandbox
// denies, are not.
//
// Config keys: `url` (required; grant its origin in `allow.http`),
// `method` (default POST), `body` (default a small JSON event).
//
// Build it (from the repository root; `cargo xtask test` does this for you):
//
//   npm install @bytecodealliance/componentize-js@0.23.0
//   npx componentize-js examples/js-notify/app.js --wit wit -n hook -o notify_js.wasm

import { get } from "wasi:config/store@0.2.0-rc.1";
import { emit } from "lifehook:hook/log@0.1.3";

function failure(message, retryable) {
  return { message, retryable, retryAfterMs: undefined };
}

export async function run(invocation) {
  const url = get("url");
  if (url === undefined) {
    throw failure("missing config key `url`: set it in the step's [config]", false);
  }
  const method = get("method") ?? "POST";
  const body =
    get("body") ??
    JSON.stringify({ event: invocation.phase, step: invocation.step, attempt: invocation.attempt });
  let response;
  try {
    response = await fetch(url, { method, body: method === "GET" ? undefined : body });
  } catch (e) {
    const text = String(e && e.message ? e.message : e);
    if (/denied/i.test(text)) {
      throw failure(`${method} ${url} was denied: grant its origin in allow.http (${text})`, false);
    }
    throw failure(`${method} ${url} failed: ${text}`, true);
  }
  const summary = `${method} ${url} -> ${response.status}`;
  if (response.ok) {
    emit("info", summary);
    return summary;
  }
  const retryable = response.status === 408 || response.status === 429 || response.status >= 500;
  throw failure(summary, retryable);
}
