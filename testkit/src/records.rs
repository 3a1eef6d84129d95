//! Builders of the record values the tests and the benchmark produce: subscription records and
//! rewards events as the guide shows them.

/// A valid, enabled subscription record as JSON.
pub fn subscription_json(
    id: &str,
    url: &str,
    event_types: &[&str],
    client_id: Option<&str>,
    secret: &str,
) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "url": url,
        "event_types": event_types,
        "client_id": client_id,
        "secret": secret,
        "enabled": true,
    })
    .to_string()
    .into_bytes()
}

/// A rewards event of `event_type` for `user` with a fixed timestamp and `points: 150.0` (a
/// number JavaScript prints as `150`).
pub fn event_json(event_type: &str, user: &str) -> Vec<u8> {
    serde_json::json!({
        "event_type": event_type,
        "data": {"user_id": user, "points": 150.0},
        "timestamp": "2025-01-15T10:30:00.000Z"
    })
    .to_string()
    .into_bytes()
}
