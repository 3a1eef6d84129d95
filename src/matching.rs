//! The pure rule deciding whether a subscription receives an event (SPEC §2): the subscription is
//! enabled, its event types contain the event's type or `*`, and its client scope is unset or equal
//! to the event's `client_id`. No I/O here; the table in [`crate::subscriptions`] only narrows the
//! candidates by event type before applying this rule.

use crate::subscriptions::Subscription;

/// The wildcard event type: every event, known type or not.
pub const WILDCARD: &str = "*";

/// Whether `sub` receives an event of `event_type` from OAuth client `client_id`.
pub fn matches(sub: &Subscription, event_type: &str, client_id: Option<&str>) -> bool {
    sub.enabled
        && sub
            .event_types
            .iter()
            .any(|t| t == WILDCARD || t == event_type)
        && match sub.client_id.as_deref() {
            None => true,
            Some(scope) => client_id == Some(scope),
        }
}

/// Whether a retry or replay may still be sent to its subscription as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Enabled and still matching the event.
    Send,
    /// No subscription with that id any more.
    Deleted,
    Disabled,
    /// Enabled, but its event types or client scope no longer take the event.
    Mismatch,
}

impl Recheck {
    /// The delivery-log outcome (and replay skip reason); `None` for [`Recheck::Send`].
    pub fn outcome(self) -> Option<&'static str> {
        match self {
            Recheck::Send => None,
            Recheck::Deleted => Some("subscription_deleted"),
            Recheck::Disabled => Some("subscription_disabled"),
            Recheck::Mismatch => Some("subscription_mismatch"),
        }
    }
}

/// The rule of [`matches`] applied again to a delivery that was matched earlier: `client_id` is
/// the event's client (`Some(None)`: it had none) or `None` when the task did not record it, in
/// which case only the enabled flag and the event types are checked.
pub fn recheck(
    sub: Option<&Subscription>,
    event_type: &str,
    client_id: Option<Option<&str>>,
) -> Recheck {
    match sub {
        None => Recheck::Deleted,
        Some(s) if !s.enabled => Recheck::Disabled,
        Some(s) => {
            let ok = match client_id {
                Some(client) => matches(s, event_type, client),
                None => s
                    .event_types
                    .iter()
                    .any(|t| t == WILDCARD || t == event_type),
            };
            if ok {
                Recheck::Send
            } else {
                Recheck::Mismatch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn sub(types: &[&str], client: Option<&str>, enabled: bool) -> Subscription {
        Subscription {
            id: "sub".into(),
            url: "https://partner.example/webhook".parse().unwrap(),
            event_types: types.iter().map(|s| s.to_string()).collect(),
            client_id: client.map(str::to_string),
            secret: Secret::new("s"),
            enabled,
        }
    }

    #[test]
    fn matching_table() {
        let pts = "rewards.points_awarded";
        // (event types, scope, enabled, event type, event client, expected, case name)
        type Case<'a> = (
            &'a [&'a str],
            Option<&'a str>,
            bool,
            &'a str,
            Option<&'a str>,
            bool,
            &'a str,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (&[pts], None, true, pts, None, true, "exact type, unscoped"),
            (&[pts], None, true, pts, Some("app1"), true, "unscoped receives scoped events"),
            (&[pts], None, true, "cashback.processed", None, false, "other type"),
            (&["*"], None, true, "cashback.processed", None, true, "wildcard"),
            (&["*"], None, true, "custom.unknown_type", None, true, "wildcard takes unknown types"),
            (&[pts], None, true, "custom.unknown_type", None, false, "unknown type, exact sub"),
            (&["cashback.processed", pts], None, true, pts, None, true, "one of several types"),
            (&[pts], Some("app1"), true, pts, Some("app1"), true, "scope equal"),
            (&[pts], Some("app1"), true, pts, Some("app2"), false, "scope differs"),
            (&[pts], Some("app1"), true, pts, None, false, "scoped sub, unscoped event"),
            (&["*"], Some("app1"), true, pts, Some("app1"), true, "wildcard and scope"),
            (&["*"], Some("app1"), true, pts, Some("APP1"), false, "scope is case-sensitive"),
            (&[pts], None, false, pts, None, false, "disabled"),
            (&["*"], None, false, pts, None, false, "disabled wildcard"),
            (&["rewards.points"], None, true, pts, None, false, "no prefix matching"),
        ];
        for (types, scope, enabled, event_type, client, expected, name) in cases {
            let s = sub(types, *scope, *enabled);
            assert_eq!(matches(&s, event_type, *client), *expected, "case: {name}");
        }
    }

    /// (subscription now, the event's client as recorded, expected, case name)
    type RecheckCase<'a> = (
        Option<&'a Subscription>,
        Option<Option<&'a str>>,
        Recheck,
        &'a str,
    );

    #[test]
    fn recheck_table() {
        let pts = "rewards.points_awarded";
        let scoped = sub(&[pts], Some("app1"), true);
        let narrowed = sub(&["cashback.processed"], None, true);
        let off = sub(&["*"], None, false);
        let any = sub(&["*"], None, true);
        #[rustfmt::skip]
        let cases: &[RecheckCase] = &[
            (None, Some(None), Recheck::Deleted, "deleted"),
            (Some(&off), Some(None), Recheck::Disabled, "disabled"),
            (Some(&any), Some(None), Recheck::Send, "wildcard"),
            (Some(&scoped), Some(Some("app1")), Recheck::Send, "same scope"),
            (Some(&scoped), Some(Some("app2")), Recheck::Mismatch, "scope changed"),
            (Some(&scoped), Some(None), Recheck::Mismatch, "scoped now, event had no client"),
            (Some(&scoped), None, Recheck::Send, "client not recorded: scope not checked"),
            (Some(&narrowed), Some(None), Recheck::Mismatch, "event types narrowed"),
            (Some(&narrowed), None, Recheck::Mismatch, "narrowed, client not recorded"),
        ];
        for (s, client, expected, name) in cases {
            assert_eq!(recheck(*s, pts, *client), *expected, "case: {name}");
        }
        assert_eq!(Recheck::Send.outcome(), None);
        assert_eq!(Recheck::Mismatch.outcome(), Some("subscription_mismatch"));
    }
}
