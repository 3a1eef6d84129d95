//! mgpass-webhooks: a Kafka stream processor that delivers the mgPass rewards platform's webhooks.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that integration tests drive the
//! same code paths as production. Modules are named after the architecture; dependencies point
//! one way, from the composition root down:
//!
//! | layer | module | owns |
//! |---|---|---|
//! | root | [`app`] | builds and supervises the processor's tasks |
//! | CLI | [`commands`] | subscription admin and the sample event producer |
//! | | [`ops`] | the ops tools: replay, failed-delivery listing, delivery inspection, test webhooks, admin output |
//! | | [`console`] | the admin console: web UI and JSON API over `commands` and `ops`, its auth and audit trail |
//! | consume loops | [`processor`] | the event loop: decode, match, dispatch, dead-letter |
//! | | [`retries`] | the retry-tier and replay loops: hold each task until due, dispatch |
//! | mapping | [`dispatch`] | event → delivery tasks, and the interface the loops hand work to |
//! | delivery | [`delivery`] | one attempt end to end: sign, send, log, schedule the next |
//! | | [`net_guard`] | the address guard: which addresses may receive webhooks, the guarding resolver |
//! | Kafka plumbing | [`kafka`] | clients, rebalance listener, offset tracking, in-flight bookkeeping, consumer lag from statistics |
//! | state | [`subscriptions`] | subscription records, their validation, the table and its loader |
//! | decoding | [`avro`] | Confluent-framed Avro: the schema-registry client, event decoding (both forms), the Avro → JSON mapping, our records in Avro |
//! | pure | [`events`] | decoding rewards events from Kafka records (the JSON form's rules) |
//! | | [`matching`] | the rule deciding which subscriptions receive an event |
//! | | [`body`] | the canonical (JavaScript fixed-point) webhook body |
//! | | [`signing`] | the HMAC-SHA256 signature header and the guide's check |
//! | operations | [`admin_server`] | `/metrics`, liveness and readiness over HTTP |
//! | | [`healthcheck`] | the `healthcheck` subcommand's probe of `/livez` (container health checks) |
//! | | [`metrics`] | the closed set of Prometheus metrics |
//! | | [`topics`] | creation of every topic of the product with its policy |
//! | | [`config`], [`secret`], [`telemetry`] | layered settings, the redacting secret type, logs |
//! | | [`allocator`] | the global allocator's settings (how long freed memory is kept) |

pub mod admin_server;
pub mod allocator;
pub mod app;
pub mod avro;
pub mod body;
pub mod commands;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dispatch;
pub mod events;
pub mod healthcheck;
pub mod kafka;
pub mod matching;
pub mod metrics;
pub mod net_guard;
pub mod ops;
pub mod processor;
pub mod retries;
pub mod secret;
pub mod signing;
pub mod subscriptions;
pub mod telemetry;
pub mod topics;
