//! The console's HTML pages, rendered on the server with maud (every interpolated value is
//! escaped by the template engine; nothing is marked pre-escaped but the two static assets,
//! served as files). Forms post with the session's CSRF token in `_csrf`; the one script
//! (`/static/console.js`) only asks for confirmations and polls a replay job's progress, and
//! every page works without it.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{html, Markup, DOCTYPE};

use super::actions::{self, ActionError, ReplayRequest, SubscriptionInput};
use super::api::{self, ListQuery, SinceQuery};
use super::auth::Role;
use super::{Console, Ctx};
use crate::events::KNOWN_EVENT_TYPES;
use crate::ops::admin::SubscriptionView;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(|| async { super::see_other("/subscriptions") }))
        .route("/subscriptions", get(list).post(create))
        .route("/subscriptions/new", get(new_form))
        .route("/subscriptions/{id}", get(detail).post(update))
        .route("/subscriptions/{id}/enable", post(enable))
        .route("/subscriptions/{id}/disable", post(disable))
        .route("/subscriptions/{id}/delete", post(delete))
        .route("/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/subscriptions/{id}/test", post(test))
        .route("/deliveries/{delivery_id}", get(delivery))
        .route("/failed", get(failed))
        .route("/replay/preview", get(preview))
        .route("/replay", post(replay))
        .route("/replay/{job}", get(job))
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

fn page(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// The frame of every page: navigation, who is logged in, the logout button.
fn layout(ctx: Option<&Ctx>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — mgpass-webhooks console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    span.brand { "mgpass-webhooks console" }
                    @if let Some(ctx) = ctx {
                        nav {
                            a href="/subscriptions" { "Subscriptions" }
                            a href="/failed" { "Failed deliveries" }
                        }
                        span.who {
                            (ctx.id.user) " "
                            span class={"role role-" (ctx.id.role.as_str())} { (ctx.id.role.as_str()) }
                            @if ctx.id.via == "accounts" {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="_csrf" value=(ctx.csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error page (also used by the guard).
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    Html(
        layout(
            None,
            status.canonical_reason().unwrap_or("Error"),
            html! { p.error { (message) } p { a href="/subscriptions" { "Back to the console" } } },
        )
        .into_string(),
    )
}

fn action_error(ctx: &Ctx, e: &ActionError) -> Response {
    if let ActionError::Internal(err) = e {
        tracing::error!(error = %format!("{err:#}"), "console action failed");
    }
    page(
        e.status(),
        layout(
            Some(ctx),
            "Not done",
            html! { p.error { (e.message()) } p { a href="/subscriptions" { "Back" } } },
        ),
    )
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="_csrf" value=(ctx.csrf); }
}

/// A form body's name/value pairs (repeated names kept, as checkboxes send them).
struct FormData(Vec<(String, String)>);

impl FormData {
    fn parse(bytes: &[u8]) -> FormData {
        FormData(url::form_urlencoded::parse(bytes).into_owned().collect())
    }
    fn get(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    fn refs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
    fn subscription(&self) -> SubscriptionInput {
        SubscriptionInput {
            id: self.get("id"),
            url: self.get("url"),
            event_types: self.all("event_types"),
            client_id: Some(self.get("client_id")),
            secret: Some(self.get("secret")),
            enabled: self.has("enabled"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Login

pub async fn login_form(State(c): State<Arc<Console>>) -> Response {
    if c.mode == super::AuthMode::Proxy {
        return super::see_other("/subscriptions");
    }
    login_page(&c, StatusCode::OK, None)
}

fn login_page(c: &Console, status: StatusCode, error: Option<&str>) -> Response {
    let token = c.keys.login_token(chrono::Utc::now().timestamp());
    page(
        status,
        layout(
            None,
            "Log in",
            html! {
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form.card method="post" action="/login" {
                    input type="hidden" name="_login" value=(token);
                    label { "User name" input name="username" autocomplete="username" required autofocus; }
                    label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            },
        ),
    )
}

pub async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    raw: axum::body::Bytes,
) -> Response {
    if c.mode == super::AuthMode::Proxy {
        return super::see_other("/subscriptions");
    }
    let f = FormData::parse(&raw);
    let now = chrono::Utc::now().timestamp();
    if !c.keys.check_login_token(&f.get("_login"), now) {
        return login_page(
            &c,
            StatusCode::FORBIDDEN,
            Some("the login form expired or was not ours: try again"),
        );
    }
    let user = f.get("username");
    let keys = [format!("ip:{}", peer.ip()), format!("user:{user}")];
    if let Err(wait) = c.limiter.attempt(&keys, std::time::Instant::now()) {
        let mut r = login_page(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many login attempts: try again in {} s",
                wait.as_secs().max(1)
            )),
        );
        if let Ok(v) = wait.as_secs().max(1).to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let password = f.get("password");
    let (c2, u2) = (c.clone(), user.clone());
    let role = tokio::task::spawn_blocking(move || c2.check_login(&u2, &password))
        .await
        .unwrap_or(None);
    let ctx = Ctx {
        id: super::auth::Identity {
            user: user.clone(),
            role: role.unwrap_or(Role::Viewer),
            csrf_seed: String::new(),
            via: "accounts",
        },
        client: peer.ip().to_string(),
        csrf: String::new(),
    };
    let outcome = if role.is_some() { "ok" } else { "refused" };
    let record = actions::audit_record(&ctx, "login", &user, outcome, serde_json::json!({}));
    if let Err(e) = c.auditor.write(&record).await {
        tracing::error!(error = %format!("{e:#}"), "audit write failed");
        return login_page(
            &c,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("the audit trail cannot be written (Kafka?): logins are refused until it can"),
        );
    }
    if role.is_none() {
        return login_page(
            &c,
            StatusCode::UNAUTHORIZED,
            Some("wrong user name or password"),
        );
    }
    let mut r = super::see_other("/subscriptions");
    if let Ok(v) = c.session_cookie(&user).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(c): State<Arc<Console>>, Extension(ctx): Extension<Ctx>) -> Response {
    let now = chrono::Utc::now().timestamp();
    c.revoked.revoke(
        &ctx.id.csrf_seed,
        now + c.config.console.session_ttl_secs as i64,
        now,
    );
    let record = actions::audit_record(&ctx, "logout", &ctx.id.user, "ok", serde_json::json!({}));
    if let Err(e) = c.auditor.write(&record).await {
        tracing::error!(error = %format!("{e:#}"), "audit write failed");
    }
    let mut r = super::see_other("/login");
    if let Ok(v) = c.clear_cookie().parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

fn admin_only(ctx: &Ctx) -> bool {
    ctx.id.role == Role::Admin
}

async fn list(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ListQuery>,
) -> Response {
    let (subs, invalid) = match api::listing(&c, &q).await {
        Ok(x) => x,
        Err(e) => return action_error(&ctx, &e),
    };
    let body = html! {
        form.toolbar method="get" action="/subscriptions" {
            input type="search" name="q" value=(q.q) placeholder="Search id, URL, event type, client, fingerprint" aria-label="Search";
            select name="status" aria-label="Status" {
                option value="" selected[q.status.is_empty()] { "enabled and disabled" }
                option value="enabled" selected[q.status == "enabled"] { "enabled" }
                option value="disabled" selected[q.status == "disabled"] { "disabled" }
            }
            button type="submit" { "Search" }
            @if admin_only(&ctx) { a.button href="/subscriptions/new" { "New subscription" } }
        }
        table #subscriptions {
            thead { tr { th { "Id" } th { "Status" } th { "Event types" } th { "Client scope" } th { "URL" } th { "Secret fingerprint" } } }
            tbody {
                @for s in &subs {
                    tr {
                        td { a href={"/subscriptions/" (s.id)} { (s.id) } }
                        td { (status_badge(s.enabled)) }
                        td { (s.event_types.join(", ")) }
                        td { (s.client_id.as_deref().unwrap_or("any")) }
                        td.url { (s.url) }
                        td { code { (s.secret_fingerprint) } }
                    }
                }
                @for (id, why) in &invalid {
                    tr.suspended {
                        td { (id) }
                        td { span.badge.bad { "suspended" } }
                        td colspan="4" { "latest record invalid (" (why.reason) "): " (why.message) }
                    }
                }
            }
        }
        p.muted { (subs.len()) " subscriptions shown, " (invalid.len()) " suspended." }
    };
    page(StatusCode::OK, layout(Some(&ctx), "Subscriptions", body))
}

fn status_badge(enabled: bool) -> Markup {
    html! {
        @if enabled { span.badge.ok { "enabled" } } @else { span.badge.off { "disabled" } }
    }
}

/// The create/edit form, with `errors` beside their fields.
fn subscription_form(
    ctx: &Ctx,
    action: &str,
    v: &SubscriptionInput,
    creating: bool,
    errors: Option<&ActionError>,
) -> Markup {
    let err = |f: &str| errors.and_then(|e| e.for_field(f)).map(str::to_string);
    let field_error = |f: &str| {
        html! { @if let Some(m) = err(f) { span.field-error id={"error-" (f)} role="alert" { (m) } } }
    };
    html! {
        form.card.subscription-form method="post" action=(action) {
            (csrf_field(ctx))
            @if let Some(e) = errors {
                @if e.for_field("id").is_none() && e.for_field("url").is_none()
                    && e.for_field("event_types").is_none() && e.for_field("client_id").is_none()
                    && e.for_field("secret").is_none() {
                    p.error role="alert" { (e.message()) }
                }
            }
            @if creating {
                label { "Id" input name="id" value=(v.id) required pattern="[A-Za-z0-9._:\\-]{1,128}"; (field_error("id")) }
            }
            label { "Endpoint URL" input name="url" value=(v.url) required placeholder="https://partner.example/webhook"; (field_error("url")) }
            fieldset {
                legend { "Event types" }
                label.check { input type="checkbox" name="event_types" value="*" checked[v.event_types.iter().any(|t| t == "*")]; "* (every event)" }
                @for t in KNOWN_EVENT_TYPES {
                    label.check { input type="checkbox" name="event_types" value=(t) checked[v.event_types.iter().any(|x| x == t)]; (t) }
                }
                (field_error("event_types"))
            }
            label { "Client scope (OAuth client id; empty: every client)" input name="client_id" value=(v.client_id.clone().unwrap_or_default()); (field_error("client_id")) }
            @if creating {
                label { "Secret (empty: a strong one is generated and shown once)" input type="password" name="secret" autocomplete="new-password"; (field_error("secret")) }
            }
            label.check { input type="checkbox" name="enabled" value="on" checked[v.enabled]; "Enabled" }
            button type="submit" { @if creating { "Create subscription" } @else { "Save changes" } }
        }
    }
}

async fn new_form(Extension(ctx): Extension<Ctx>) -> Response {
    let v = SubscriptionInput {
        event_types: vec!["*".into()],
        enabled: true,
        ..SubscriptionInput::default()
    };
    let body = html! {
        @if !admin_only(&ctx) { p.error { "Your role is viewer: you cannot create subscriptions." } }
        (subscription_form(&ctx, "/subscriptions", &v, true, None))
    };
    page(StatusCode::OK, layout(Some(&ctx), "New subscription", body))
}

async fn create(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    raw: axum::body::Bytes,
) -> Response {
    let f = FormData::parse(&raw);
    let input = f.subscription();
    match actions::create(&c, &ctx, input.clone()).await {
        Ok(created) => {
            let s = &created.subscription;
            let body = html! {
                p.notice { "Subscription " a href={"/subscriptions/" (s.id)} { (s.id) } " created." }
                (warnings(&created.warnings))
                @if let Some(secret) = &created.generated_secret {
                    (secret_once(secret))
                }
                (subscription_facts(s))
            };
            page(
                StatusCode::CREATED,
                layout(Some(&ctx), "Subscription created", body),
            )
        }
        Err(e @ ActionError::Invalid(_)) => page(
            e.status(),
            layout(
                Some(&ctx),
                "New subscription",
                subscription_form(&ctx, "/subscriptions", &input, true, Some(&e)),
            ),
        ),
        Err(e) => action_error(&ctx, &e),
    }
}

fn warnings(w: &[String]) -> Markup {
    html! { @for x in w { p.warning { "Warning: " (x) } } }
}

fn secret_once(secret: &str) -> Markup {
    html! {
        div.secret-once {
            p { strong { "The signing secret, shown this once:" } " give it to the partner now; the console never shows it again (only its fingerprint)." }
            code #secret { (secret) }
        }
    }
}

fn subscription_facts(s: &SubscriptionView) -> Markup {
    html! {
        dl.facts {
            dt { "Id" } dd #sub-id { (s.id) }
            dt { "Status" } dd { (status_badge(s.enabled)) }
            dt { "URL" } dd.url { (s.url) }
            dt { "Event types" } dd { (s.event_types.join(", ")) }
            dt { "Client scope" } dd { (s.client_id.as_deref().unwrap_or("any client")) }
            dt { "Secret fingerprint" } dd { code #fingerprint { (s.secret_fingerprint) } }
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct DetailQuery {
    since: Option<String>,
    done: Option<String>,
    delivery: Option<String>,
}

async fn detail(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Response {
    let table = match crate::commands::load_table(&c.config).await {
        Ok(t) => t,
        Err(e) => return action_error(&ctx, &ActionError::Internal(e)),
    };
    let Some(sub) = table.get(&id) else {
        let msg = match table.invalid(&id) {
            Some(why) => format!("subscription {id:?} is suspended: {}", why.message),
            None => format!("no subscription with id {id:?}"),
        };
        return action_error(&ctx, &ActionError::NotFound(msg));
    };
    let view = SubscriptionView::of(&sub);
    let sq = SinceQuery {
        since: q.since.clone(),
    };
    let since = match api::since_ms(&sq, c.config.console.deliveries_lookback_secs) {
        Ok(s) => s,
        Err(e) => return action_error(&ctx, &e),
    };
    let (rows, _) = match crate::ops::deliveries::recent(&c.config, &id, since, 100).await {
        Ok(x) => x,
        Err(e) => return action_error(&ctx, &ActionError::Internal(e)),
    };
    let since_text = q
        .since
        .clone()
        .unwrap_or_else(|| format!("{}h", c.config.console.deliveries_lookback_secs / 3600));
    let input = SubscriptionInput {
        id: view.id.clone(),
        url: view.url.clone(),
        event_types: view.event_types.clone(),
        client_id: view.client_id.clone(),
        secret: None,
        enabled: view.enabled,
    };
    let base = format!("/subscriptions/{}", view.id);
    let body = html! {
        @match (q.done.as_deref(), q.delivery.as_deref()) {
            (Some("test"), Some(d)) => p.notice #notice { "Test webhook " a href={"/deliveries/" (d)} { (d) } " sent through the replay topic; it shows below once attempted (reload)." },
            (Some("saved"), _) => p.notice #notice { "Saved." },
            (Some("enabled"), _) => p.notice #notice { "Enabled." },
            (Some("disabled"), _) => p.notice #notice { "Disabled." },
            _ => {}
        }
        (subscription_facts(&view))
        @if admin_only(&ctx) {
            div.actions {
                form.inline method="post" action={(base) "/test"} { (csrf_field(&ctx)) button #send-test type="submit" { "Send test webhook" } }
                @if view.enabled {
                    form.inline method="post" action={(base) "/disable"} { (csrf_field(&ctx)) button type="submit" { "Disable" } }
                } @else {
                    form.inline method="post" action={(base) "/enable"} { (csrf_field(&ctx)) button type="submit" { "Enable" } }
                }
                form.inline method="post" action={(base) "/rotate-secret"} data-confirm="Rotate the secret? The partner must switch to the new one." {
                    (csrf_field(&ctx)) button type="submit" { "Rotate secret" }
                }
                form.inline method="post" action={(base) "/delete"} data-confirm={"Delete subscription " (view.id) "?"} {
                    (csrf_field(&ctx)) button.danger type="submit" { "Delete" }
                }
                a.button href={"/failed?subscription=" (view.id)} { "Failed deliveries" }
            }
            details {
                summary { "Edit" }
                (subscription_form(&ctx, &base, &input, false, None))
            }
        }
        h2 { "Recent deliveries" }
        form.toolbar method="get" action=(base) {
            label { "Since " input name="since" value=(since_text) size="22" aria-label="Since"; }
            button type="submit" { "Show" }
            span.muted { "newest first, from " (crate::delivery::rfc3339_ms(since)) }
        }
        (deliveries_table(&rows, since))
    };
    page(
        StatusCode::OK,
        layout(Some(&ctx), &format!("Subscription {}", view.id), body),
    )
}

fn outcome_badge(outcome: &str) -> Markup {
    let class = if outcome == "success" {
        "badge ok"
    } else {
        "badge bad"
    };
    html! { span class=(class) { (outcome) } }
}

/// `since`: the lower bound of the page's read, passed on to each delivery's page so it reads
/// the log from there too.
fn deliveries_table(rows: &[crate::ops::deliveries::DeliverySummary], since: i64) -> Markup {
    let since = enc(&crate::delivery::rfc3339_ms(since));
    html! {
        table #deliveries {
            thead { tr { th { "Last attempt" } th { "Delivery" } th { "Event type" } th { "Attempts" } th { "Outcome" } th { "Status" } th { "Duration" } th { "Error" } } }
            tbody {
                @for r in rows {
                    tr data-outcome=(r.outcome) {
                        td { (r.last_attempted_at) }
                        td { a href={"/deliveries/" (r.delivery_id) "?since=" (since)} { (r.delivery_id) }
                             @if r.source_topic == crate::ops::test_webhook::TEST_SOURCE_TOPIC { " " span.badge.off { "test" } }
                             @if let Some(run) = &r.replay_run { " " span.badge.off title=(run) { "replay" } } }
                        td { (r.event_type) }
                        td { (r.attempts) }
                        td { (outcome_badge(&r.outcome)) }
                        td { (r.http_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into())) }
                        td { (r.duration_ms) " ms" }
                        td.error-text { (r.error.as_deref().unwrap_or("")) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="8" .muted { "No delivery in this time range." } } }
            }
        }
    }
}

async fn update(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Response {
    let f = FormData::parse(&raw);
    let mut input = f.subscription();
    input.secret = None;
    input.id = id.clone();
    match actions::update(&c, &ctx, &id, input.clone()).await {
        Ok(_) => super::see_other(&format!("/subscriptions/{}?done=saved", enc(&id))),
        Err(e @ ActionError::Invalid(_)) => page(
            e.status(),
            layout(
                Some(&ctx),
                &format!("Edit {id}"),
                subscription_form(
                    &ctx,
                    &format!("/subscriptions/{id}"),
                    &input,
                    false,
                    Some(&e),
                ),
            ),
        ),
        Err(e) => action_error(&ctx, &e),
    }
}

/// `s` as one URL path segment or query value.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn enable(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::set_enabled(&c, &ctx, &id, true).await {
        Ok(_) => super::see_other(&format!("/subscriptions/{}?done=enabled", enc(&id))),
        Err(e) => action_error(&ctx, &e),
    }
}

async fn disable(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::set_enabled(&c, &ctx, &id, false).await {
        Ok(_) => super::see_other(&format!("/subscriptions/{}?done=disabled", enc(&id))),
        Err(e) => action_error(&ctx, &e),
    }
}

async fn delete(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::delete(&c, &ctx, &id).await {
        Ok(()) => super::see_other("/subscriptions"),
        Err(e) => action_error(&ctx, &e),
    }
}

async fn rotate(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::rotate_secret(&c, &ctx, &id).await {
        Ok((view, secret)) => page(
            StatusCode::OK,
            layout(
                Some(&ctx),
                "Secret rotated",
                html! {
                    p.notice { "The secret of " a href={"/subscriptions/" (view.id)} { (view.id) } " was replaced; deliveries from now on are signed with the new one." }
                    (secret_once(&secret))
                    (subscription_facts(&view))
                },
            ),
        ),
        Err(e) => action_error(&ctx, &e),
    }
}

async fn test(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::test_webhook(&c, &ctx, &id).await {
        Ok(d) => super::see_other(&format!(
            "/subscriptions/{}?done=test&delivery={}",
            enc(&id),
            enc(&d)
        )),
        Err(e) => action_error(&ctx, &e),
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries, failures, replay

async fn delivery(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(delivery_id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    let since = match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => match api::since_ms(&q, 0) {
            Ok(s) => Some(s),
            Err(e) => return action_error(&ctx, &e),
        },
    };
    let records = match crate::ops::failed::delivery_attempts(&c.config, &delivery_id, since).await
    {
        Ok((r, _)) => r,
        Err(e) => return action_error(&ctx, &ActionError::Internal(e)),
    };
    let body = html! {
        @if let Some(first) = records.first() {
            dl.facts {
                dt { "Subscription" } dd { a href={"/subscriptions/" (first.subscription_id)} { (first.subscription_id) } }
                dt { "Event type" } dd { (first.event_type) }
                dt { "Idempotency key" } dd { code { (first.idempotency_key) } }
                dt { "Source" } dd { (first.source.topic) "[" (first.source.partition) "]@" (first.source.offset) }
            }
        } @else {
            p.muted { "No attempt of this delivery in the delivery log." }
        }
        @if let Some(t) = since {
            p.muted { "Attempts from " (crate::delivery::rfc3339_ms(t)) " on. " a href={"/deliveries/" (enc(&delivery_id))} { "All attempts" } " (reads the whole delivery log)." }
        }
        table #attempts {
            thead { tr { th { "Attempted at" } th { "Attempt" } th { "Outcome" } th { "Status" } th { "Duration" } th { "Next attempt" } th { "Replay run" } th { "Error" } } }
            tbody {
                @for r in &records {
                    tr data-outcome=(r.outcome) {
                        td { (r.attempted_at) }
                        td { (r.attempt) }
                        td { (outcome_badge(&r.outcome)) }
                        td { (r.http_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into())) }
                        td { (r.duration_ms) " ms" }
                        td { (r.next_attempt_at.as_deref().unwrap_or("-")) }
                        td { (r.replay.as_ref().map(|m| m.run_id.as_str()).unwrap_or("-")) }
                        td.error-text { (r.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        layout(Some(&ctx), &format!("Delivery {delivery_id}"), body),
    )
}

/// The selector form of the failed page, filled from `p`.
fn selector_form(p: &[(String, String)]) -> Markup {
    let get = |n: &str| {
        p.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let reason = get("reason");
    html! {
        form.card.selectors method="get" action="/failed" {
            label { "Subscription" input name="subscription" value=(get("subscription")); }
            label { "Event type" input name="event_type" value=(get("event_type")); }
            label { "Delivery id" input name="delivery_id" value=(get("delivery_id")); }
            label { "Last outcome"
                select name="reason" {
                    option value="" { "any" }
                    @for r in crate::ops::known_reasons() { option value=(r) selected[reason == r] { (r) } }
                }
            }
            label { "Failed since (RFC 3339 or 30m, 2h, 7d)" input name="since" value=(get("since")); }
            label { "Failed before" input name="until" value=(get("until")); }
            div.buttons {
                button type="submit" { "List" }
                button #preview type="submit" formaction="/replay/preview" { "Preview replay" }
            }
        }
    }
}

async fn failed(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = api::pairs(&raw);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let select = match crate::ops::SelectorArgs::from_pairs(refs, crate::delivery::now_ms()) {
        Ok(s) => s,
        Err((f, m)) => return action_error(&ctx, &ActionError::Invalid(vec![(f, m)])),
    };
    let (rows, total) = match api::failed_rows(&c, &select, 200).await {
        Ok(x) => x,
        Err(e) => return action_error(&ctx, &e),
    };
    let body = html! {
        (selector_form(&p))
        p.muted { (total) " failed deliveries (" (select.describe()) ")" @if total > rows.len() { ", the newest " (rows.len()) " shown" } "." }
        table #failed {
            thead { tr { th { "Failed at" } th { "Delivery" } th { "Subscription" } th { "Event type" } th { "Last outcome" } th { "Error" } th { "Replayed since by" } th {} } }
            tbody {
                @for r in &rows {
                    tr {
                        td { (r.failed_at) }
                        td { a href={"/deliveries/" (r.delivery_id)} { (r.delivery_id) } }
                        td { a href={"/subscriptions/" (r.subscription_id)} { (r.subscription_id) } }
                        td { (r.event_type) }
                        td { (outcome_badge(&r.last_outcome)) }
                        td.error-text { (r.last_error.as_deref().unwrap_or("")) }
                        td { (r.replayed_by.as_deref().unwrap_or("-")) }
                        td { a href={"/replay/preview?delivery_id=" (enc(&r.delivery_id))} { "Replay…" } }
                    }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        layout(Some(&ctx), "Failed deliveries", body),
    )
}

async fn preview(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = api::pairs(&raw);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let req = match ReplayRequest::from_pairs(refs) {
        Ok(r) => r,
        Err(e) => return action_error(&ctx, &e),
    };
    let (summary, report) = match actions::preview(&c, &req).await {
        Ok(x) => x,
        Err(e) => {
            return page(
                e.status(),
                layout(
                    Some(&ctx),
                    "Replay preview",
                    html! { p.error { (e.message()) } (selector_form(&p)) },
                ),
            )
        }
    };
    let n = summary.planned;
    let body = html! {
        p { "Selection: " strong { (if req.all { "every failed delivery".to_string() } else { req.select.describe() }) } }
        dl.facts #preview-counts {
            dt { "Failed records read" } dd { (summary.read) }
            dt { "Selected" } dd #count-selected { (summary.selected) }
            dt { "Would replay" } dd #count-replay { (n) }
            @for (reason, count) in &summary.skipped { dt { "Would skip: " (reason) } dd { (count) } }
        }
        @if !summary.by_group.is_empty() {
            table { thead { tr { th { "Subscription" } th { "Event type" } th { "Would replay" } } }
                tbody { @for ((s, t), count) in &summary.by_group { tr { td { (s) } td { (t) } td { (count) } } } } }
        }
        details { summary { "Dry-run report" } pre { (report) } }
        @if admin_only(&ctx) && n > 0 {
            form.card method="post" action="/replay" data-confirm={"Replay " (n) " deliveries now?"} {
                (csrf_field(&ctx))
                @for (k, v) in &p {
                    @if !matches!(k.as_str(), "confirm" | "force" | "_csrf") && !v.is_empty() { input type="hidden" name=(k) value=(v); }
                }
                label.check { input #confirm type="checkbox" name="confirm" value="true" required; "I checked the preview: re-inject these " (n) " deliveries with a fresh attempt budget" }
                label.check { input type="checkbox" name="force" value="true" checked[req.force]; "Also those already replayed since they failed (force)" }
                button #replay type="submit" { "Replay " (n) " deliveries" }
            }
        } @else if n == 0 {
            p.muted { "Nothing to replay." }
        } @else {
            p.muted { "Your role is viewer: replays need the admin role." }
        }
    };
    page(StatusCode::OK, layout(Some(&ctx), "Replay preview", body))
}

async fn replay(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    raw: axum::body::Bytes,
) -> Response {
    let f = FormData::parse(&raw);
    let req = match ReplayRequest::from_pairs(f.refs()) {
        Ok(r) => r,
        Err(e) => return action_error(&ctx, &e),
    };
    match actions::start_replay(&c, &ctx, req).await {
        Ok(job) => super::see_other(&format!("/replay/{}", job.id)),
        Err(e) => action_error(&ctx, &e),
    }
}

async fn job(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(job): Path<String>,
) -> Response {
    let Some(j) = c.jobs.get(&job) else {
        return action_error(
            &ctx,
            &ActionError::NotFound(format!("no replay job {job:?}")),
        );
    };
    let v = j.view();
    let (state, detail) = match &v.state {
        super::jobs::JobState::Running => ("running".to_string(), String::new()),
        super::jobs::JobState::Done {
            run_id,
            produced,
            planned,
            skipped,
        } => (
            "done".to_string(),
            format!("run {run_id}: {produced} of {planned} re-injected, {skipped} skipped"),
        ),
        super::jobs::JobState::Failed { error } => ("failed".to_string(), error.clone()),
    };
    let body = html! {
        p { "Selection: " strong { (v.selection) } ", started by " (v.actor) "." }
        div #job data-job=(v.id) data-state=(state) {
            progress #job-progress max=(v.planned.max(1)) value=(v.produced) {}
            p { span #job-produced { (v.produced) } " of " span #job-planned { (v.planned) } " re-injected — " strong #job-state { (state) } }
            p #job-detail { (detail) }
            pre #job-report { (v.report) }
        }
        noscript { p { a href={"/replay/" (v.id)} { "Reload" } " to see the progress." } }
        p { a href="/failed" { "Back to failed deliveries" } }
    };
    page(StatusCode::OK, layout(Some(&ctx), "Replay", body))
}
