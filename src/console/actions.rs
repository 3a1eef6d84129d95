//! Every change the console makes, as one function each, called by the pages and the API
//! alike: the CLI's library functions ([`crate::commands`], [`crate::ops`]) plus the console's
//! own rules (a new id must be free; a given secret must be strong) and the audit record. Errors
//! come back sorted ([`ActionError`]): invalid input by field, a missing subscription, a refusal,
//! or an internal failure.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::audit::AuditRecord;
use super::{Console, Ctx};
use crate::commands::{self, NotFound, Refused};
use crate::ops::admin::{self, SecretSource, SubscriptionView, MIN_SECRET_BYTES};
use crate::ops::replay::ReplayArgs;
use crate::ops::{SelectorArgs, UsageError};
use crate::subscriptions::SubscriptionRecord;

/// Why an action did not happen.
#[derive(Debug)]
pub enum ActionError {
    /// Bad input: (field, message) pairs, shown beside the fields.
    Invalid(Vec<(&'static str, String)>),
    NotFound(String),
    /// Understood but refused (a disabled subscription's test webhook, an unconfirmed replay).
    Refused(String),
    Internal(anyhow::Error),
}

impl ActionError {
    pub fn status(&self) -> StatusCode {
        match self {
            ActionError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ActionError::NotFound(_) => StatusCode::NOT_FOUND,
            ActionError::Refused(_) => StatusCode::CONFLICT,
            ActionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ActionError::Invalid(errors) => errors
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
            ActionError::NotFound(m) | ActionError::Refused(m) => m.clone(),
            ActionError::Internal(e) => format!("{e:#}"),
        }
    }

    /// The message of `field`, when the input was invalid there.
    pub fn for_field(&self, field: &str) -> Option<&str> {
        match self {
            ActionError::Invalid(errors) => errors
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, m)| m.as_str()),
            _ => None,
        }
    }

    /// Sorts an error of the library functions.
    pub fn of(e: anyhow::Error) -> ActionError {
        if let Some(Refused(inv)) = e.downcast_ref::<Refused>() {
            return ActionError::Invalid(vec![(inv.field(), inv.message.clone())]);
        }
        if let Some(NotFound(id)) = e.downcast_ref::<NotFound>() {
            return ActionError::NotFound(format!("no subscription with id {id:?}"));
        }
        if let Some(crate::ops::test_webhook::NotSendable(m)) = e.downcast_ref() {
            return ActionError::Refused(m.clone());
        }
        if let Some(UsageError(m)) = e.downcast_ref::<UsageError>() {
            return ActionError::Refused(m.clone());
        }
        ActionError::Internal(e)
    }
}

/// A subscription as a form or a JSON body gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    #[serde(default)]
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Only on create; empty or absent: generated.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl SubscriptionInput {
    /// Blank optional fields as absent, trimmed id and URL.
    fn normalised(mut self) -> Self {
        self.id = self.id.trim().to_string();
        self.url = self.url.trim().to_string();
        self.client_id = self
            .client_id
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty());
        self.secret = self.secret.filter(|s| !s.is_empty());
        self
    }
}

/// What a create returned.
#[derive(Debug)]
pub struct Created {
    pub subscription: SubscriptionView,
    /// The generated secret, to show once; `None` when the admin gave one.
    pub generated_secret: Option<String>,
    /// Sending rules that would refuse the URL (see [`commands::url_warnings`]).
    pub warnings: Vec<String>,
}

/// The audit record of `ctx` doing `action` to `target`.
pub fn audit_record(
    ctx: &Ctx,
    action: &str,
    target: &str,
    outcome: &'static str,
    details: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        at: crate::delivery::rfc3339_ms(crate::delivery::now_ms()),
        actor: ctx.id.user.clone(),
        role: ctx.id.role.as_str(),
        via: ctx.id.via,
        client: ctx.client.clone(),
        action: action.to_string(),
        target: target.to_string(),
        outcome,
        details,
    }
}

/// Writes the audit record of an action's result and passes the result on; an audit that
/// cannot be written turns the answer into an error saying so (the change itself was made).
async fn audited<T>(
    c: &Console,
    ctx: &Ctx,
    action: &str,
    target: &str,
    result: Result<T, ActionError>,
    details: impl FnOnce(&T) -> serde_json::Value,
) -> Result<T, ActionError> {
    let (outcome, d) = match &result {
        Ok(v) => ("ok", details(v)),
        Err(ActionError::Internal(e)) => ("failed", json!({ "error": format!("{e:#}") })),
        Err(e) => ("refused", json!({ "error": e.message() })),
    };
    let record = audit_record(ctx, action, target, outcome, d);
    if let Err(e) = c.auditor.write(&record).await {
        tracing::error!(error = %format!("{e:#}"), action, target, "audit write failed");
        if result.is_ok() {
            return Err(ActionError::Internal(anyhow::anyhow!(
                "{action} of {target} was done, but its audit record could not be written: {e:#}"
            )));
        }
    }
    result
}

fn view_details(v: &SubscriptionView) -> serde_json::Value {
    json!({
        "url": v.url,
        "event_types": v.event_types,
        "client_id": v.client_id,
        "enabled": v.enabled,
        "secret_fingerprint": v.secret_fingerprint,
    })
}

/// Creates a subscription (the id must be free); the secret is generated when none is given.
pub async fn create(
    c: &Console,
    ctx: &Ctx,
    input: SubscriptionInput,
) -> Result<Created, ActionError> {
    let input = input.normalised();
    let id = input.id.clone();
    let result = create_inner(c, input).await;
    audited(c, ctx, "subscription.create", &id, result, |v| {
        let mut d = view_details(&v.subscription);
        d["secret_generated"] = json!(v.generated_secret.is_some());
        d
    })
    .await
}

async fn create_inner(c: &Console, input: SubscriptionInput) -> Result<Created, ActionError> {
    let mut errors = Vec::new();
    let source = match input.secret {
        Some(s) => SecretSource::Given(s),
        None => SecretSource::Generate,
    };
    let chosen = admin::choose_secret(source, |_| None, || Ok(String::new()));
    let (secret, generated) = match chosen {
        Ok(x) => x,
        Err(admin::SecretError::TooShort(n)) => {
            errors.push((
                "secret",
                format!(
                    "{n} bytes; at least {MIN_SECRET_BYTES} are required (leave it empty to \
                     have a strong one generated)"
                ),
            ));
            (crate::secret::Secret::generate(), true)
        }
        Err(e) => return Err(ActionError::Internal(e.into())),
    };
    let record = SubscriptionRecord {
        id: input.id.clone(),
        url: input.url,
        event_types: input.event_types,
        client_id: input.client_id,
        secret: secret.expose().to_string(),
        enabled: input.enabled,
    };
    // Every field problem at once: the record's own validation, field by field.
    for e in record.field_problems() {
        if !errors.iter().any(|(f, _)| *f == e.field()) {
            errors.push((e.field(), e.message));
        }
    }
    if !errors.is_empty() {
        return Err(ActionError::Invalid(errors));
    }
    let table = commands::load_table(&c.config)
        .await
        .map_err(ActionError::Internal)?;
    if table.get(&input.id).is_some() || table.invalid(&input.id).is_some() {
        return Err(ActionError::Invalid(vec![(
            "id",
            format!(
                "a subscription with id {:?} exists; edit it instead",
                input.id
            ),
        )]));
    }
    let sub = commands::put_subscription(&c.config, record)
        .await
        .map_err(ActionError::of)?;
    let warnings = commands::url_warnings(&c.config, &sub.url).await;
    Ok(Created {
        subscription: SubscriptionView::of(&sub),
        generated_secret: generated.then(|| secret.expose().to_string()),
        warnings,
    })
}

/// Changes URL, event types, client scope and enabled of subscription `id` (the secret stays;
/// see [`rotate_secret`]).
pub async fn update(
    c: &Console,
    ctx: &Ctx,
    id: &str,
    input: SubscriptionInput,
) -> Result<SubscriptionView, ActionError> {
    let input = input.normalised();
    if input.secret.is_some() {
        return Err(ActionError::Invalid(vec![(
            "secret",
            "a secret is not edited: rotate it instead".into(),
        )]));
    }
    // Every field's problem at once (the write below would report the first only).
    let probe = SubscriptionRecord {
        id: id.to_string(),
        url: input.url.clone(),
        event_types: input.event_types.clone(),
        client_id: input.client_id.clone(),
        secret: "unchanged".into(),
        enabled: input.enabled,
    };
    let problems: Vec<(&'static str, String)> = probe
        .field_problems()
        .into_iter()
        .filter(|e| e.field() != "id")
        .map(|e| (e.field(), e.message))
        .collect();
    let result = if !problems.is_empty() {
        Err(ActionError::Invalid(problems))
    } else {
        commands::edit_subscription(&c.config, id, |r| {
            r.url = input.url;
            r.event_types = input.event_types;
            r.client_id = input.client_id;
            r.enabled = input.enabled;
        })
        .await
        .map(|s| SubscriptionView::of(&s))
        .map_err(ActionError::of)
    };
    audited(c, ctx, "subscription.update", id, result, view_details).await
}

/// Enables or disables subscription `id`.
pub async fn set_enabled(
    c: &Console,
    ctx: &Ctx,
    id: &str,
    enabled: bool,
) -> Result<SubscriptionView, ActionError> {
    let result = commands::set_enabled(&c.config, id, enabled)
        .await
        .map(|s| SubscriptionView::of(&s))
        .map_err(ActionError::of);
    let action = if enabled {
        "subscription.enable"
    } else {
        "subscription.disable"
    };
    audited(c, ctx, action, id, result, view_details).await
}

/// Deletes subscription `id` (a tombstone); refuses an id the topic does not hold.
pub async fn delete(c: &Console, ctx: &Ctx, id: &str) -> Result<(), ActionError> {
    let result = async {
        let table = commands::load_table(&c.config)
            .await
            .map_err(ActionError::Internal)?;
        if table.get(id).is_none() && table.invalid(id).is_none() {
            return Err(ActionError::NotFound(format!(
                "no subscription with id {id:?}"
            )));
        }
        commands::delete_subscription(&c.config, id)
            .await
            .map_err(ActionError::of)
    }
    .await;
    audited(c, ctx, "subscription.delete", id, result, |_| json!({})).await
}

/// Gives subscription `id` a new generated secret; returns the view and the secret (shown once).
pub async fn rotate_secret(
    c: &Console,
    ctx: &Ctx,
    id: &str,
) -> Result<(SubscriptionView, String), ActionError> {
    let result = commands::rotate_secret(&c.config, id)
        .await
        .map(|(s, secret)| (SubscriptionView::of(&s), secret.expose().to_string()))
        .map_err(ActionError::of);
    audited(
        c,
        ctx,
        "subscription.rotate_secret",
        id,
        result,
        |(v, _)| json!({ "secret_fingerprint": v.secret_fingerprint }),
    )
    .await
}

/// Sends a test webhook to subscription `id`; returns its delivery id.
pub async fn test_webhook(c: &Console, ctx: &Ctx, id: &str) -> Result<String, ActionError> {
    let result = crate::ops::test_webhook::send(&c.config, id, None)
        .await
        .map(|t| (t.delivery_id, t.event_type))
        .map_err(ActionError::of);
    audited(
        c,
        ctx,
        "subscription.test_webhook",
        id,
        result,
        |(d, t)| json!({ "delivery_id": d, "event_type": t }),
    )
    .await
    .map(|(d, _)| d)
}

/// A replay request: the shared selectors, or every failed delivery, and the confirmation.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    pub select: SelectorArgs,
    pub all: bool,
    pub force: bool,
    pub confirmed: bool,
}

impl ReplayRequest {
    /// From name/value pairs (a form or a query string): the selectors of
    /// [`SelectorArgs::from_pairs`], and `all`, `force`, `confirm` (`true`, `on`, `yes`, `1`).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<ReplayRequest, ActionError> {
        let select = SelectorArgs::from_pairs(pairs.clone(), crate::delivery::now_ms())
            .map_err(|(f, m)| ActionError::Invalid(vec![(f, m)]))?;
        let flag = |name: &str| {
            pairs
                .clone()
                .into_iter()
                .any(|(k, v)| k == name && matches!(v, "true" | "on" | "yes" | "1"))
        };
        Ok(ReplayRequest {
            select,
            all: flag("all"),
            force: flag("force"),
            confirmed: flag("confirm"),
        })
    }

    pub fn args(&self, dry_run: bool) -> ReplayArgs {
        ReplayArgs {
            select: self.select.clone(),
            all: self.all,
            dry_run,
            force: self.force,
            ..ReplayArgs::default()
        }
    }
}

/// The replay job's dry run: what a replay of this selection would do, and its report.
pub async fn preview(
    c: &Console,
    req: &ReplayRequest,
) -> Result<(crate::ops::replay::Summary, String), ActionError> {
    let mut out = Vec::new();
    let summary = crate::ops::replay::run(&c.config, &req.args(true), &mut out)
        .await
        .map_err(ActionError::of)?;
    Ok((summary, String::from_utf8_lossy(&out).into_owned()))
}

/// Starts the replay job in the background; refuses an unconfirmed request. The start and the
/// end are audited.
pub async fn start_replay(
    c: &Arc<Console>,
    ctx: &Ctx,
    req: ReplayRequest,
) -> Result<Arc<super::jobs::Job>, ActionError> {
    let selection = if req.all {
        "every failed delivery".to_string()
    } else {
        req.select.describe()
    };
    let checked = if !req.confirmed {
        Err(ActionError::Refused(
            "a replay needs a confirmation (confirm=true) after its preview".into(),
        ))
    } else if req.select.is_empty() && !req.all {
        Err(ActionError::Refused(
            "no selector given: choose a subscription, event type, delivery id, reason or time \
             range, or all"
                .into(),
        ))
    } else if req.all && !req.select.is_empty() {
        Err(ActionError::Refused(
            "all cannot be combined with selectors".into(),
        ))
    } else {
        Ok(())
    };
    let job = checked.map(|()| c.jobs.add(&ctx.id.user, req.args(false)));
    let job = audited(
        c,
        ctx,
        "replay.start",
        "replay",
        job,
        |j| json!({ "job": j.id, "selection": selection, "force": req.force }),
    )
    .await?;
    let (c2, ctx2, j2) = (c.clone(), ctx.clone(), job.clone());
    tokio::spawn(async move {
        let mut out = Vec::new();
        let result =
            crate::ops::replay::run_observed(&c2.config, &j2.args, &mut out, Some(&j2.observed))
                .await;
        j2.finish(&result, String::from_utf8_lossy(&out).into_owned());
        let target = result
            .as_ref()
            .map(|s| s.run_id.clone())
            .unwrap_or_else(|_| "replay".into());
        let (outcome, details) = match &result {
            Ok(s) => (
                "ok",
                json!({ "job": j2.id, "run_id": s.run_id, "selection": j2.selection,
                        "selected": s.selected, "planned": s.planned, "produced": s.produced,
                        "skipped": s.skipped }),
            ),
            Err(e) => ("failed", json!({ "job": j2.id, "error": format!("{e:#}") })),
        };
        let record = audit_record(&ctx2, "replay.finish", &target, outcome, details);
        if let Err(e) = c2.auditor.write(&record).await {
            tracing::error!(error = %format!("{e:#}"), "audit write failed");
        }
    });
    Ok(job)
}
