//! The test kit of mgpass-webhooks, shared by the integration tests (`tests/`) and the benchmark
//! (`bench/`); never part of the product (`publish = false`, not a dependency of the binary).
//!
//! | module | what |
//! |---|---|
//! | [`https`] | a throw-away CA and the HTTPS (HTTP/1.1 + HTTP/2) accept loop of local receivers |
//! | [`receiver`] | the tests' programmable receiver: records every request, checks signatures |
//! | [`fixtures`] | Kafka fixtures: a test's own topics and group, producers, bounded topic reads |
//! | [`records`] | builders of subscription and rewards event record values |
//! | [`process`] | the processor binary as a child process: spawn, signal, wait, probe, stop |
//! | [`registry`] | the schema registry of Avro tests: the shared one (`MGPASS_TEST_REGISTRY`), or one of a test's own |
//! | [`console`] | the admin console in-process, and a client that logs in and calls it |
//! | [`dispatch`] | a dispatcher that hands every event to the test instead of delivering it |
//!
//! Kafka fixtures talk to the broker at `MGPASS_TEST_BOOTSTRAP` (default 127.0.0.1:9092;
//! `scripts/test.sh` starts one) and fail loudly when none answers: they never skip.

pub mod console;
pub mod dispatch;
pub mod fixtures;
pub mod https;
pub mod process;
pub mod receiver;
pub mod records;
pub mod registry;

pub use dispatch::{ChannelDispatcher, Dispatched};
pub use fixtures::{
    bootstrap, config, produce_all, producer, read_topic, setup_topics, try_produce_all, unique,
};
pub use records::{event_json, subscription_json};
