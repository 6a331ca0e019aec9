// {{name}}: a lifehook hook component in JavaScript.
//
// lifehook calls `run` once per attempt with the phase, the step's name, the
// attempt number and the milliseconds left (fields in camelCase:
// `invocation.timeLeftMs`); it returns a one-line summary, or throws
// `{ message, retryable, retryAfterMs }`. The step's `[config]` table is read
// with `get`; `fetch` sends HTTP (to origins the step grants in
// `allow.http`). The contract is in wit/hook.wit.

import { get } from "wasi:config/store@0.2.0-rc.1";
import { emit } from "lifehook:hook/log@{{contract}}";

export function run(invocation) {
  const who = get("who");
  if (who === undefined) {
    throw { message: "missing config key `who`: set it in the step's [config]", retryable: false };
  }
  emit("info", `${invocation.timeLeftMs} ms left`);
  return `said hello to ${who} from step ${invocation.step} (attempt ${invocation.attempt}/${invocation.maxAttempts})`;
}
