//! notify-shutdown: one HTTP request per attempt, telling a service that this
//! pod is stopping (or starting), or deregistering it from a load balancer or
//! service registry.
//!
//! Config keys:
//! - `url` (required): where to send the request.
//! - `method`: `POST` by default; `PUT` and `DELETE` suit registries.
//! - `headers.<name>`: request headers (a `[config.headers]` table).
//! - `body`: a template; `{{phase}}`, `{{step}}`, `{{attempt}}`, `{{pod}}`,
//!   `{{namespace}}` and `{{env.NAME}}` are replaced. `{{pod}}` and
//!   `{{namespace}}` read the variables named by `pod-env` (default
//!   `POD_NAME`) and `namespace-env` (default `POD_NAMESPACE`), which the
//!   step must grant. Default: a small JSON document.
//! - `timeout`: per-request timeout (never more than the attempt's time left).
//!
//! Outcome: any 2xx succeeds. Connection errors, 408, 429 and 5xx are retryable
//! failures (a `Retry-After` in seconds is passed to the runner, which waits
//! for it when it fits in the time left); other statuses are fatal.

use lifehook_sdk::http::{self, Method};
use lifehook_sdk::{Failure, Hook, Invocation, config, env};

const DEFAULT_BODY: &str = r#"{"event":"{{phase}}","pod":"{{pod}}","namespace":"{{namespace}}","step":"{{step}}","attempt":{{attempt}}}"#;

struct NotifyShutdown;

impl Hook for NotifyShutdown {
    fn run(inv: Invocation) -> Result<String, Failure> {
        let url = config::require("url")?;
        let method_text = config::get("method")
            .unwrap_or_else(|| "POST".into())
            .to_uppercase();
        let method = Method::from_bytes(method_text.as_bytes()).map_err(|_| {
            Failure::fatal(format!(
                "config key `method` = {method_text:?} is not an HTTP method"
            ))
        })?;
        let body = render(
            &config::get("body").unwrap_or_else(|| DEFAULT_BODY.into()),
            &inv,
        )?;
        let mut headers = config::table("headers");
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            && !body.is_empty()
        {
            let json = body.trim_start().starts_with('{') || body.trim_start().starts_with('[');
            let kind = if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            headers.push(("content-type".into(), kind.into()));
        }
        let timeout =
            config::duration("timeout")?.map_or(inv.time_left(), |t| t.min(inv.time_left()));
        let body = if method == Method::GET || method == Method::HEAD {
            Vec::new()
        } else {
            body.into_bytes()
        };
        let response = http::send(method.clone(), &url, &headers, body, timeout)?;
        let status = response.status;
        let summary = format!("{method} {url} -> {}", status.as_u16());
        if status.is_success() {
            return Ok(summary);
        }
        let detail = String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
            .trim()
            .to_owned();
        let message = if detail.is_empty() {
            summary
        } else {
            format!("{summary}: {detail}")
        };
        if let Some(after) = response.header("retry-after").and_then(http::retry_after)
            && http::is_retryable(status)
        {
            lifehook_sdk::info!("{message}; server asks to retry after {}s", after.as_secs());
        }
        Err(response.failure(message))
    }
}

/// Replaces `{{name}}` placeholders; an unknown name or an ungranted
/// variable is a fatal failure naming it.
fn render(template: &str, inv: &Invocation) -> Result<String, Failure> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            Failure::fatal("config key `body` has a `{{` without its closing `}}`")
        })?;
        let name = after[..end].trim();
        let value = match name {
            "phase" => inv.phase_name().to_owned(),
            "step" => inv.step.clone(),
            "attempt" => inv.attempt.to_string(),
            "pod" => env::var(&config::get("pod-env").unwrap_or_else(|| "POD_NAME".into()))?,
            "namespace" => {
                env::var(&config::get("namespace-env").unwrap_or_else(|| "POD_NAMESPACE".into()))?
            }
            _ => match name.strip_prefix("env.") {
                Some(var) => env::var(var)?,
                None => {
                    return Err(Failure::fatal(format!(
                        "unknown placeholder {{{{{name}}}}} in `body`: use phase, step, attempt, pod, namespace or env.NAME"
                    )));
                }
            },
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

lifehook_sdk::export!(NotifyShutdown);
