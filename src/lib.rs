//! mgpass-webhooks: a Kafka stream processor that delivers the mgPass rewards platform's webhooks.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that integration tests drive the
//! same code paths as production. Modules are named after the architecture:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | typed, layered configuration and its validation |
//! | [`secret`] | the redacting wrapper for every secret value |
//! | [`kafka`] | librdkafka client configuration (producer, consumers, admin) |
//! | [`topics`] | creation of every topic of the product with its policy |
//! | [`subscriptions`] | subscription records, their validation, the in-memory table and its loader |
//! | [`events`] | decoding rewards events from Kafka records |
//! | [`matching`] | the pure rule deciding which subscriptions receive an event |
//! | [`body`] | the canonical (JavaScript fixed-point) webhook body |
//! | [`signing`] | the HMAC-SHA256 signature header |
//! | [`processor`] | the event consume loop: decode, match, dispatch, dead-letter |
//! | [`local_https`] | throw-away CA and HTTPS server loop for local receivers (tests, benchmark) |
//! | [`admin_server`] | `/metrics`, liveness and readiness over HTTP |
//! | [`healthcheck`] | the `healthcheck` subcommand's probe of `/livez` (container health checks) |
//! | [`metrics`] | the closed set of Prometheus metrics |
//! | [`telemetry`] | tracing subscriber set-up |

pub mod admin_server;
pub mod body;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod events;
pub mod healthcheck;
pub mod kafka;
pub mod local_https;
pub mod matching;
pub mod metrics;
pub mod processor;
pub mod secret;
pub mod signing;
pub mod subscriptions;
pub mod telemetry;
pub mod topics;
