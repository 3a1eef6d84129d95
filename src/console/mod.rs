//! The admin console (`mgpass-webhooks console`): a web UI and its JSON API for admins and
//! on-call ops, on its own listener (`console.listen`, not the processor's admin port). It needs
//! Kafka only: every page reads the topics with the same bounded readers as the CLI, and every
//! change goes through the same library functions as the CLI ([`crate::commands`],
//! [`crate::ops`]) — this module adds the web front end, who may use it, and the audit trail.
//!
//! | module | owns |
//! |---|---|
//! | this one | the listener, the routes, and the guard every request but `/livez`, `/readyz`, `/login` and the static assets passes: identity, CSRF on every state change, the admin role for every change, secure headers |
//! | [`auth`] | identities, signed session cookies, CSRF and login tokens, argon2, the login rate limit |
//! | [`actions`] | each change as one function shared by the pages and the API: validation errors by field, the audit record |
//! | [`api`] | the JSON API under `/api/` |
//! | [`pages`] | the server-rendered HTML pages (maud templates, every value escaped) |
//! | [`jobs`] | replay jobs started from the console, and their progress |
//! | [`audit`] | the audit topic's records |
//!
//! Guarantees: nothing answers without an identity but `/livez`, `/readyz` (Kafka answers),
//! the login form and the static assets; no state change
//! without the session's CSRF token; no change, test webhook or replay for a `viewer`; no secret
//! in a page or answer except a generated or rotated one, once, in the answer to the request
//! that made it (`Cache-Control: no-store` everywhere).

pub mod actions;
pub mod api;
pub mod audit;
pub mod auth;
pub mod jobs;
pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use auth::{Identity, Keys, ProxyCheck, RateLimit, Revoked, Role};

/// Largest form body the guard reads to find the CSRF field.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The header carrying the CSRF token of API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the console knows who is asking (`console.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Accounts,
    Proxy,
}

/// Everything the handlers share.
pub struct Console {
    pub config: Config,
    pub keys: Keys,
    pub mode: AuthMode,
    /// user name → (argon2 hash, role).
    accounts: HashMap<String, (String, Role)>,
    /// Verified against for unknown user names, so they take as long as known ones.
    dummy_hash: String,
    pub limiter: RateLimit,
    pub revoked: Revoked,
    pub auditor: audit::Auditor,
    pub jobs: jobs::Jobs,
    proxy_header: axum::http::HeaderName,
}

/// The identity of a request, and where it came from; put into request extensions by the
/// guard for the handlers.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub id: Identity,
    pub client: String,
    /// The CSRF token to embed in forms and send back with API calls.
    pub csrf: String,
}

impl Console {
    /// Checks the console's settings (`console.auth` and its source) and builds the state.
    pub fn new(config: Config) -> Result<Console> {
        let problems = config.console.validate_for_serving();
        if !problems.is_empty() {
            return Err(anyhow!(
                "the console cannot start:\n  - {}",
                problems.join("\n  - ")
            ));
        }
        let c = &config.console;
        let mode = if c.auth == "proxy" {
            AuthMode::Proxy
        } else {
            AuthMode::Accounts
        };
        let keys = if c.session_key.is_empty() {
            tracing::warn!(
                "console.session_key is not set: sessions are signed with a random key and end \
                 when the console restarts (set it to run more than one replica)"
            );
            Keys::random()
        } else {
            Keys::new(c.session_key.as_bytes())
        };
        let accounts = c
            .accounts
            .iter()
            .map(|a| {
                let role = Role::parse(&a.role).unwrap_or(Role::Viewer);
                (a.username.clone(), (a.password_hash.clone(), role))
            })
            .collect();
        let dummy_hash = auth::hash_password(&auth::new_nonce())
            .map_err(|e| anyhow!("preparing the login check: {e}"))?;
        Ok(Console {
            keys,
            mode,
            accounts,
            dummy_hash,
            limiter: RateLimit::new(c.login_attempts_per_minute),
            revoked: Revoked::default(),
            auditor: audit::Auditor::new(&config)?,
            jobs: jobs::Jobs::default(),
            proxy_header: c
                .proxy_user_header
                .parse()
                .context("console.proxy_user_header")?,
            config,
        })
    }

    /// The account `user` logs in as, when `password` is right (constant work either way).
    pub fn check_login(&self, user: &str, password: &str) -> Option<Role> {
        match self.accounts.get(user) {
            Some((hash, role)) => auth::verify_password(password, hash).then_some(*role),
            None => {
                let _ = auth::verify_password(password, &self.dummy_hash);
                None
            }
        }
    }

    /// The identity of a request: from its session cookie, or from the proxy's header.
    fn identify(&self, req: &Request, peer: SocketAddr) -> Result<Identity, (StatusCode, String)> {
        match self.mode {
            AuthMode::Proxy => {
                let header = req
                    .headers()
                    .get(&self.proxy_header)
                    .and_then(|v| v.to_str().ok());
                match auth::proxy_identity(&self.config.console, peer.ip(), header) {
                    ProxyCheck::User(id) => Ok(id),
                    ProxyCheck::Untrusted => Err((
                        StatusCode::FORBIDDEN,
                        "requests must come through the authenticating proxy".into(),
                    )),
                    ProxyCheck::NoUser => Err((
                        StatusCode::UNAUTHORIZED,
                        format!("the proxy sent no {} header", self.proxy_header),
                    )),
                }
            }
            AuthMode::Accounts => {
                let now = chrono::Utc::now().timestamp();
                let opened = cookie(req, auth::SESSION_COOKIE)
                    .and_then(|v| self.keys.open_session(v, now))
                    .filter(|(_, nonce, _)| !self.revoked.is_revoked(nonce));
                let Some((user, nonce, _)) = opened else {
                    return Err((StatusCode::UNAUTHORIZED, "login required".into()));
                };
                // The role is the account's now: a removed account's session ends at once.
                let Some((_, role)) = self.accounts.get(&user) else {
                    return Err((StatusCode::UNAUTHORIZED, "login required".into()));
                };
                Ok(Identity {
                    user,
                    role: *role,
                    csrf_seed: nonce,
                    via: "accounts",
                })
            }
        }
    }

    /// The `Set-Cookie` value of a new session for `user`.
    pub fn session_cookie(&self, user: &str) -> String {
        let ttl = self.config.console.session_ttl_secs;
        let exp = chrono::Utc::now().timestamp() + ttl as i64;
        let value = self.keys.session(user, exp, &auth::new_nonce());
        self.cookie_attrs(&value, ttl)
    }

    /// The `Set-Cookie` value that ends the session.
    pub fn clear_cookie(&self) -> String {
        self.cookie_attrs("", 0)
    }

    fn cookie_attrs(&self, value: &str, max_age: u64) -> String {
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            auth::SESSION_COOKIE,
            if self.config.console.cookie_secure {
                "; Secure"
            } else {
                ""
            }
        )
    }
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a path belongs to the JSON API (errors as JSON, no redirects to the login page).
fn is_api(path: &str) -> bool {
    path.starts_with("/api/")
}

/// An error answer in the form the caller reads: JSON for the API, a page otherwise.
pub fn error_response(api: bool, status: StatusCode, message: &str) -> Response {
    if api {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        (status, pages::error_page(status, message)).into_response()
    }
}

/// Every request but the public ones: identity, then for a state change the CSRF token and the
/// admin role. See the module doc.
async fn guard(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let api = is_api(req.uri().path());
    let id = match c.identify(&req, peer) {
        Ok(id) => id,
        Err((status, msg)) => {
            if !api && status == StatusCode::UNAUTHORIZED && c.mode == AuthMode::Accounts {
                return see_other("/login");
            }
            return error_response(api, status, &msg);
        }
    };
    let csrf = c.keys.csrf_token(&id.csrf_seed);
    let ctx = Ctx {
        id,
        client: peer.ip().to_string(),
        csrf,
    };
    let mut req = req;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let path = req.uri().path().to_string();
        let (req2, token) = match csrf_token_of(req).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        req = req2;
        if !token.is_some_and(|t| c.keys.check_csrf(&ctx.id.csrf_seed, &t)) {
            return error_response(
                api,
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            );
        }
        if path != "/logout" && ctx.id.role != Role::Admin {
            let record = actions::audit_record(
                &ctx,
                "denied",
                &path,
                "denied",
                serde_json::json!({"method": req.method().as_str(), "reason": "viewer role"}),
            );
            if let Err(e) = c.auditor.write(&record).await {
                tracing::error!(error = %format!("{e:#}"), "audit write failed");
            }
            return error_response(
                api,
                StatusCode::FORBIDDEN,
                "your role is viewer (read only): changes and replays need the admin role",
            );
        }
    }
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

/// The CSRF token of a state-changing request: the header, or the `_csrf` field of a form
/// body (read, then put back for the handler).
async fn csrf_token_of(req: Request) -> Result<(Request, Option<String>), Response> {
    if let Some(t) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        let t = t.to_string();
        return Ok((req, Some(t)));
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((req, None));
    }
    let api = is_api(req.uri().path());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| error_response(api, StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

/// `303 See Other` to `to`.
pub fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

/// Headers on every answer: a strict CSP (only our own scripts and styles, no framing), no
/// sniffing, no referrer, no caching.
async fn secure_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Ready when the Kafka cluster answers (every page reads it); public like `/livez`, and
/// saying no more than that.
async fn readyz(State(c): State<Arc<Console>>) -> Response {
    let config = c.config.clone();
    let reachable = tokio::task::spawn_blocking(move || {
        crate::kafka::check_reachable(&config, std::time::Duration::from_secs(3))
    })
    .await;
    match reachable {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n").into_response(),
    }
}

/// The console's routes (see [`api`] and [`pages`]), guarded.
pub fn router(state: Arc<Console>) -> Router {
    let guarded = Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .route("/logout", post(pages::logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/static/console.css", get(pages::css))
        .route("/static/console.js", get(pages::js))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .merge(guarded)
        .layer(middleware::from_fn(secure_headers))
        .with_state(state)
}

/// Serves the console on `console.listen` until `cancel` fires; reports the bound address
/// through `bound`.
pub async fn serve(
    config: Config,
    cancel: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    crate::kafka::check_reachable(&config, crate::kafka::METADATA_TIMEOUT)?;
    let addr: SocketAddr = config.console.listen.parse().context("console.listen")?;
    let state = Arc::new(Console::new(config)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("console.listen: cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, mode = ?state.mode, "console listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
    .context("console server failed")
}
