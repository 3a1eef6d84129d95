//! The broker's request counters, read before and after a run with a command that prints them
//! (`scripts/kafka.sh requests`: Kafka's JMX `RequestsPerSec` and `RequestBytes` per request
//! type, `MessagesIn`, `BytesIn`, `BytesOut`), so each run can say how many produce, fetch and
//! commit requests the broker handled per delivery and how big they were.

use std::collections::BTreeMap;

use serde::Serialize;

/// One snapshot: name → (count, bytes). Bytes are 0 for the three totals.
pub type Snapshot = BTreeMap<String, (f64, f64)>;

/// Requests of one type during a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RequestDelta {
    pub count: f64,
    /// Request bytes (for MessagesIn/BytesIn/BytesOut, the figure itself is the count).
    pub bytes: f64,
}

/// Runs `cmd` with `sh -c` and parses `name count [bytes]` lines; `None` (with a warning) when
/// it fails, so a broker without JMX only loses these figures.
pub async fn snapshot(cmd: &str) -> Option<Snapshot> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .await;
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "[bench] broker request counters: `{cmd}` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("[bench] broker request counters: cannot run `{cmd}`: {e}");
            return None;
        }
    };
    Some(parse(&String::from_utf8_lossy(&out.stdout)))
}

fn parse(text: &str) -> Snapshot {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?.to_string();
            let count = f.next()?.parse().ok()?;
            let bytes = f.next().and_then(|b| b.parse().ok()).unwrap_or(0.0);
            Some((name, (count, bytes)))
        })
        .collect()
}

/// What changed between two snapshots (types that did not change are left out).
pub fn delta(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, RequestDelta> {
    after
        .iter()
        .filter_map(|(k, (count, bytes))| {
            let (c0, b0) = before.get(k).copied().unwrap_or((0.0, 0.0));
            let d = RequestDelta {
                count: count - c0,
                bytes: bytes - b0,
            };
            (d.count > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_differences() {
        let a = parse("Produce 10 1000\nFetch 5 50\nMessagesIn 7\n");
        let b = parse("Produce 30 5000\nFetch 5 50\nMessagesIn 27\nOffsetCommit 2 200\nbad\n");
        let d = delta(&a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d["Produce"].count, 20.0);
        assert_eq!(d["Produce"].bytes, 4000.0);
        assert_eq!(d["MessagesIn"].count, 20.0);
        assert_eq!(d["OffsetCommit"].count, 2.0);
        assert!(!d.contains_key("Fetch"));
    }
}
