//! The console's JSON API, under `/api/`, behind the guard (see [`super`]): a session cookie or
//! the proxy's header, and `X-CSRF-Token` (from `GET /api/me`) on every state change. Errors
//! are `{"error": "…"}`; invalid input also has `"fields": {"<field>": "…"}`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/me` | user, role, CSRF token |
//! | GET | `/api/subscriptions?q=&status=enabled\|disabled` | subscriptions (fingerprints), suspended ones |
//! | POST | `/api/subscriptions` | create (201; a generated secret once) |
//! | GET, PUT, DELETE | `/api/subscriptions/{id}` | one subscription; edit; delete |
//! | POST | `/api/subscriptions/{id}/enable`, `/disable`, `/rotate-secret`, `/test` | the one-step actions |
//! | GET | `/api/subscriptions/{id}/deliveries?since=` | recent deliveries, newest first |
//! | GET | `/api/deliveries/{delivery_id}?since=` | one delivery's attempts, in order |
//! | GET | `/api/failed?<selectors>&limit=` | failed deliveries, newest first |
//! | GET | `/api/replay/preview?<selectors>&all=&force=` | the dry run's counts |
//! | POST | `/api/replay` | `{selectors…, "all", "force", "confirm": true}`: starts a replay job (202) |
//! | GET | `/api/replay/{job}` | the job's progress and result |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::actions::{self, ActionError, ReplayRequest, SubscriptionInput};
use super::{Console, Ctx};
use crate::ops::admin::SubscriptionView;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/subscriptions", get(list).post(create))
        .route(
            "/api/subscriptions/{id}",
            get(one).put(update).delete(delete),
        )
        .route("/api/subscriptions/{id}/enable", post(enable))
        .route("/api/subscriptions/{id}/disable", post(disable))
        .route("/api/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/api/subscriptions/{id}/test", post(test))
        .route("/api/subscriptions/{id}/deliveries", get(deliveries))
        .route("/api/deliveries/{delivery_id}", get(attempts))
        .route("/api/failed", get(failed))
        .route("/api/replay/preview", get(preview))
        .route("/api/replay", post(replay))
        .route("/api/replay/{job}", get(job))
}

/// An action error as the API answers it.
pub fn error(e: ActionError) -> Response {
    if let ActionError::Internal(err) = &e {
        tracing::error!(error = %format!("{err:#}"), "console action failed");
    }
    let mut body = json!({ "error": e.message() });
    if let ActionError::Invalid(fields) = &e {
        let map: BTreeMap<&str, &str> = fields.iter().map(|(f, m)| (*f, m.as_str())).collect();
        body["fields"] = json!(map);
    }
    (e.status(), Json(body)).into_response()
}

fn ok<T: serde::Serialize>(v: T) -> Response {
    Json(v).into_response()
}

async fn me(Extension(ctx): Extension<Ctx>) -> Response {
    ok(json!({
        "user": ctx.id.user,
        "role": ctx.id.role,
        "via": ctx.id.via,
        "csrf_token": ctx.csrf,
    }))
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    pub q: String,
    /// `enabled`, `disabled`, or anything else for both.
    #[serde(default)]
    pub status: String,
}

/// The subscriptions the listing shows (search and status filter), and the suspended ones.
pub async fn listing(
    c: &Console,
    q: &ListQuery,
) -> Result<
    (
        Vec<SubscriptionView>,
        Vec<(String, crate::subscriptions::InvalidLatest)>,
    ),
    ActionError,
> {
    let table = crate::commands::load_table(&c.config)
        .await
        .map_err(ActionError::Internal)?;
    let mut subs: Vec<SubscriptionView> = table
        .snapshot()
        .iter()
        .map(|s| SubscriptionView::of(s))
        .filter(|v| v.matches_search(&q.q))
        .filter(|v| match q.status.as_str() {
            "enabled" => v.enabled,
            "disabled" => !v.enabled,
            _ => true,
        })
        .collect();
    subs.sort_by(|a, b| a.id.cmp(&b.id));
    let mut invalid = table.invalid_snapshot();
    invalid.retain(|(id, _)| q.q.is_empty() || id.contains(q.q.trim()));
    invalid.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((subs, invalid))
}

async fn list(State(c): State<Arc<Console>>, Query(q): Query<ListQuery>) -> Response {
    match listing(&c, &q).await {
        Ok((subs, invalid)) => ok(json!({
            "subscriptions": subs,
            "suspended": invalid.iter().map(|(id, why)| json!({
                "id": id, "reason": why.reason, "error": why.message,
                "partition": why.partition, "offset": why.offset,
            })).collect::<Vec<_>>(),
            "known_event_types": crate::events::KNOWN_EVENT_TYPES,
        })),
        Err(e) => error(e),
    }
}

/// A JSON body, with a bad one answered as invalid input rather than axum's plain text.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ActionError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ActionError::Invalid(vec![("body", format!("not the expected JSON: {e}"))]))
}

async fn create(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    raw: axum::body::Bytes,
) -> Response {
    let input: SubscriptionInput = match body(&raw) {
        Ok(i) => i,
        Err(e) => return error(e),
    };
    match actions::create(&c, &ctx, input).await {
        Ok(created) => (
            StatusCode::CREATED,
            Json(json!({
                "subscription": created.subscription,
                "secret": created.generated_secret,
                "warnings": created.warnings,
            })),
        )
            .into_response(),
        Err(e) => error(e),
    }
}

async fn one(State(c): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let table = match crate::commands::load_table(&c.config).await {
        Ok(t) => t,
        Err(e) => return error(ActionError::Internal(e)),
    };
    if let Some(why) = table.invalid(&id) {
        return ok(
            json!({"id": id, "status": "invalid", "reason": why.reason, "error": why.message}),
        );
    }
    match table.get(&id) {
        Some(s) => ok(SubscriptionView::of(&s)),
        None => error(ActionError::NotFound(format!(
            "no subscription with id {id:?}"
        ))),
    }
}

async fn update(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Response {
    let input: SubscriptionInput = match body(&raw) {
        Ok(i) => i,
        Err(e) => return error(e),
    };
    if !input.id.is_empty() && input.id != id {
        return error(ActionError::Invalid(vec![(
            "id",
            "an id is not edited: create a new subscription".into(),
        )]));
    }
    match actions::update(&c, &ctx, &id, input).await {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

async fn delete(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::delete(&c, &ctx, &id).await {
        Ok(()) => ok(json!({ "deleted": id })),
        Err(e) => error(e),
    }
}

async fn enable(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::set_enabled(&c, &ctx, &id, true).await {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

async fn disable(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::set_enabled(&c, &ctx, &id, false).await {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

async fn rotate(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::rotate_secret(&c, &ctx, &id).await {
        Ok((v, secret)) => ok(json!({ "subscription": v, "secret": secret })),
        Err(e) => error(e),
    }
}

async fn test(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match actions::test_webhook(&c, &ctx, &id).await {
        Ok(d) => (StatusCode::ACCEPTED, Json(json!({ "delivery_id": d }))).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize, Default)]
pub struct SinceQuery {
    /// RFC 3339 or an age (`1h`, `7d`).
    pub since: Option<String>,
}

/// The `since` of a query, or `default_secs` ago.
pub fn since_ms(q: &SinceQuery, default_secs: u64) -> Result<i64, ActionError> {
    let now = crate::delivery::now_ms();
    match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => {
            crate::ops::parse_time_at(s, now).map_err(|e| ActionError::Invalid(vec![("since", e)]))
        }
        None => Ok(now - default_secs as i64 * 1000),
    }
}

async fn deliveries(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    let since = match since_ms(&q, c.config.console.deliveries_lookback_secs) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    match crate::ops::deliveries::recent(&c.config, &id, since, 200).await {
        Ok((rows, stats)) => ok(json!({
            "subscription": id,
            "since": crate::delivery::rfc3339_ms(since),
            "deliveries": rows,
            "records_read": stats.records,
        })),
        Err(e) => error(ActionError::Internal(e)),
    }
}

async fn attempts(
    State(c): State<Arc<Console>>,
    Path(delivery_id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    let since = match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => match since_ms(&q, 0) {
            Ok(s) => Some(s),
            Err(e) => return error(e),
        },
    };
    match crate::ops::failed::delivery_attempts(&c.config, &delivery_id, since).await {
        Ok((records, _)) if records.is_empty() => error(ActionError::NotFound(format!(
            "no delivery-log records for {delivery_id:?}"
        ))),
        Ok((records, _)) => ok(json!({ "delivery_id": delivery_id, "attempts": records })),
        Err(e) => error(ActionError::Internal(e)),
    }
}

/// Name/value pairs of a raw query string.
pub fn pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn as_refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// One failed record as the API and the failed page show it.
#[derive(Debug, serde::Serialize)]
pub struct FailedRow {
    pub delivery_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub failed_at: String,
    pub last_outcome: String,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub replayed_by: Option<String>,
}

/// The failed deliveries `select` picks, newest first, at most `limit`, and how many in all.
pub async fn failed_rows(
    c: &Console,
    select: &crate::ops::SelectorArgs,
    limit: usize,
) -> Result<(Vec<FailedRow>, usize), ActionError> {
    let (read, replays) = crate::ops::failed::read_failed_with_replays(&c.config, select)
        .await
        .map_err(ActionError::Internal)?;
    let total = read.selected.len();
    let mut rows: Vec<FailedRow> = read
        .selected
        .iter()
        .map(|r| FailedRow {
            delivery_id: r.task.delivery_id.clone(),
            subscription_id: r.task.subscription_id.clone(),
            event_type: r.task.event_type.clone(),
            failed_at: crate::delivery::rfc3339_ms(r.failed_at_ms),
            last_outcome: r.task.last_outcome_or_guess().to_string(),
            last_status: r.task.last_status,
            last_error: r.task.last_error.clone(),
            replayed_by: replays
                .replayed_by(&r.task.delivery_id, &r.at)
                .map(str::to_string),
        })
        .collect();
    rows.sort_by(|a, b| b.failed_at.cmp(&a.failed_at));
    rows.truncate(limit);
    Ok((rows, total))
}

async fn failed(State(c): State<Arc<Console>>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(&raw);
    let select = match crate::ops::SelectorArgs::from_pairs(as_refs(&p), crate::delivery::now_ms())
    {
        Ok(s) => s,
        Err((f, m)) => return error(ActionError::Invalid(vec![(f, m)])),
    };
    let limit = p
        .iter()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(200);
    match failed_rows(&c, &select, limit).await {
        Ok((rows, total)) => ok(json!({
            "selection": select.describe(),
            "total": total,
            "failed": rows,
        })),
        Err(e) => error(e),
    }
}

/// A dry run's summary as JSON.
pub fn summary_json(s: &crate::ops::replay::Summary) -> serde_json::Value {
    json!({
        "read": s.read,
        "selected": s.selected,
        "would_replay": s.planned,
        "skipped": s.skipped,
        "by_group": s.by_group.iter().map(|((sub, t), n)| json!({
            "subscription": sub, "event_type": t, "count": n
        })).collect::<Vec<_>>(),
        "undecodable": s.undecodable,
    })
}

async fn preview(State(c): State<Arc<Console>>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(&raw);
    let req = match ReplayRequest::from_pairs(as_refs(&p)) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    match actions::preview(&c, &req).await {
        Ok((summary, report)) => {
            let mut v = summary_json(&summary);
            v["report"] = json!(report);
            ok(v)
        }
        Err(e) => error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    subscription: Vec<String>,
    #[serde(default)]
    event_type: Vec<String>,
    #[serde(default)]
    delivery_id: Vec<String>,
    #[serde(default)]
    reason: Vec<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    confirm: bool,
}

async fn replay(
    State(c): State<Arc<Console>>,
    Extension(ctx): Extension<Ctx>,
    raw: axum::body::Bytes,
) -> Response {
    let b: ReplayBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let mut p: Vec<(String, String)> = Vec::new();
    for (k, vs) in [
        ("subscription", &b.subscription),
        ("event_type", &b.event_type),
        ("delivery_id", &b.delivery_id),
        ("reason", &b.reason),
    ] {
        p.extend(vs.iter().map(|v| (k.to_string(), v.clone())));
    }
    for (k, v) in [("since", &b.since), ("until", &b.until)] {
        if let Some(v) = v {
            p.push((k.to_string(), v.clone()));
        }
    }
    for (k, v) in [("all", b.all), ("force", b.force), ("confirm", b.confirm)] {
        p.push((k.to_string(), v.to_string()));
    }
    let req = match ReplayRequest::from_pairs(as_refs(&p)) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    match actions::start_replay(&c, &ctx, req).await {
        Ok(job) => (StatusCode::ACCEPTED, Json(job.view())).into_response(),
        Err(e) => error(e),
    }
}

async fn job(State(c): State<Arc<Console>>, Path(job): Path<String>) -> Response {
    match c.jobs.get(&job) {
        Some(j) => ok(j.view()),
        None => error(ActionError::NotFound(format!("no replay job {job:?}"))),
    }
}
