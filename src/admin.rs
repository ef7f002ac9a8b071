//! The admin listener: Prometheus metrics, health and readiness probes and
//! every user's budget, on an address of its own (default 127.0.0.1:9464).
//!
//! | path | response |
//! | --- | --- |
//! | `GET /metrics` | every metric in the Prometheus text format |
//! | `GET /healthz` | 200 while the process serves requests |
//! | `GET /readyz` | 200 when the budget store answers and the upstream has an address, else 503 |
//! | `GET /admin/usage` | JSON with every user's limit, used, reserved and remaining tokens and reset time |
//!
//! When `admin_token` is set, `/metrics` and `/admin/usage` require
//! `Authorization: Bearer TOKEN`; the probes stay open so load balancers and
//! systemd can call them without a secret.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;
use serde_json::json;

use crate::budget::{BudgetStore, UserBudget};
use crate::config::Config;
use crate::keys::KeyDigest;
use crate::logging;
use crate::metrics;
use crate::upstream::UpstreamTarget;

/// The admin HTTP application behind the listener.
pub struct AdminApp {
    config: Arc<Config>,
    store: Arc<dyn BudgetStore>,
    upstream: Arc<UpstreamTarget>,
    /// SHA-256 digest of the admin token. Comparing digests leaks nothing
    /// about the token through timing.
    token: Option<KeyDigest>,
}

/// Builds the admin listener service on `config.admin.listen`.
pub fn service(
    config: Arc<Config>,
    store: Arc<dyn BudgetStore>,
    upstream: Arc<UpstreamTarget>,
) -> Service<HttpServer<AdminApp>> {
    let listen = config.admin.listen.clone();
    let token = config
        .admin
        .token
        .as_ref()
        .map(|token| KeyDigest::of(token.expose()));
    let app = AdminApp {
        config,
        store,
        upstream,
        token,
    };

    let mut service = Service::new("tollgate admin".to_string(), HttpServer::new_app(app));
    service.add_tcp(&listen);
    service
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header = session.req_header();
        let path = header.uri.path();
        let protected = matches!(path, "/metrics" | "/admin/usage");

        if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/admin/usage") {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!(
                    "Not found: the admin listener serves /metrics, /healthz, /readyz and \
                     /admin/usage, not {path}."
                ),
            );
        }
        if header.method != Method::GET && header.method != Method::HEAD {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!(
                    "Method {} is not allowed on {path}: use GET.",
                    header.method
                ),
            );
        }
        if protected && !self.authorized(session) {
            let client = session
                .client_addr()
                .map_or_else(|| "an unknown address".to_string(), |addr| addr.to_string());
            logging::rejected_admin_request(&client, path);
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_admin_token",
                "Missing or invalid admin token: send 'Authorization: Bearer TOKEN' with the \
                 admin_token from the gateway configuration.",
            );
        }

        match path {
            "/metrics" => self.metrics().await,
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => self.readiness().await,
            _ => self.usage().await,
        }
    }
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = self.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        presented.is_some_and(|token| KeyDigest::of(token.trim()) == expected)
    }

    fn budget_of(&self, index: usize) -> UserBudget {
        let user = &self.config.users[index];
        UserBudget {
            limit: user.tokens,
            period: user.reset_period,
        }
    }

    /// Sets every user's budget gauges from the store, then encodes the
    /// registry.
    async fn metrics(&self) -> Response<Vec<u8>> {
        let now = SystemTime::now();
        for (index, user) in self.config.users.iter().enumerate() {
            let status = self.store.status(index, self.budget_of(index), now).await;
            metrics::set_budget(&user.name, &status);
        }

        let (body, content_type) = metrics::encode();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts are valid")
    }

    /// Returns 200 when the budget store passes its check and the upstream
    /// host has a resolved address, else 503 naming the failed check.
    async fn readiness(&self) -> Response<Vec<u8>> {
        let store = self.store.check().await;
        let upstream_resolved = self.upstream.peer().is_some();
        let ready = store.is_ok() && upstream_resolved;

        let body = json!({
            "status": if ready { "ready" } else { "not_ready" },
            "config": "loaded",
            "budget_store": match &store {
                Ok(()) => "reachable".to_string(),
                Err(e) => format!("unreachable: {e}"),
            },
            "upstream": if upstream_resolved { "resolved" } else { "unresolved" },
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }

    /// Returns every user's counters in the current window. A `null` limit
    /// or remaining count is an unlimited budget.
    async fn usage(&self) -> Response<Vec<u8>> {
        let now = SystemTime::now();
        let mut users = Vec::with_capacity(self.config.users.len());
        for (index, user) in self.config.users.iter().enumerate() {
            let status = self.store.status(index, self.budget_of(index), now).await;
            users.push(json!({
                "user": user.name,
                "tokens_limit": status.limit,
                "tokens_used": status.used,
                "tokens_reserved": status.reserved,
                "tokens_remaining": status.remaining(),
                "window_start": rfc3339(status.window.start),
                "reset_at": rfc3339(status.window.end),
                "reset_in_seconds": status.window.seconds_until_end(now),
            }));
        }
        json_response(StatusCode::OK, &json!({ "users": users }))
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

/// Builds an error response in the OpenAI error shape, as the API listener
/// sends them.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let body = json!({
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": null,
            "code": code,
        }
    });
    json_response(status, &body)
}

/// Formats Unix seconds as RFC 3339 UTC, or `None` when out of range.
fn rfc3339(unix_seconds: u64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(unix_seconds as i64).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
