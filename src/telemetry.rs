//! Tracing set-up: structured fields first, then a short message; `text` for people, `json` for
//! log pipelines. `RUST_LOG`, when set, wins over `log.level`. Colour codes are written only when
//! stderr is a terminal, so a log redirected to a file or a pipe is plain text.

use crate::config::LogConfig;
use tracing_subscriber::EnvFilter;

pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
