//! What the benchmark reads from `/proc`: CPU time and peak RSS of a process, and the host's
//! busy time (to tell whether the two cores were saturated).

use std::sync::OnceLock;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of process `pid` (all its threads), or of this process for `None`.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Field 2 (comm) is parenthesised and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MiB.
pub fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())?;
    Some(kb / 1024.0)
}

/// (busy, total) jiffies of the whole host, from the `cpu` line of `/proc/stat`.
pub fn host_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user/nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A point-in-time reading of every CPU counter the report uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub processor: Option<f64>,
    pub bench: Option<f64>,
    pub broker: Option<f64>,
    pub host: Option<(u64, u64)>,
}

impl CpuSample {
    pub fn take(processor: Option<u32>, broker: Option<u32>) -> CpuSample {
        CpuSample {
            processor: processor.and_then(|p| cpu_secs(Some(p))),
            bench: cpu_secs(None),
            broker: broker.and_then(|p| cpu_secs(Some(p))),
            host: host_jiffies(),
        }
    }
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuDelta {
    pub processor_secs: Option<f64>,
    pub bench_secs: Option<f64>,
    pub broker_secs: Option<f64>,
    /// Average busy cores of the whole host over the interval (0 ..= nproc).
    pub host_busy_cores: Option<f64>,
    /// Average busy cores of everything else on the host (other users of a shared machine).
    pub other_cores: Option<f64>,
}

impl CpuDelta {
    pub fn between(a: &CpuSample, b: &CpuSample) -> CpuDelta {
        let d = |x: Option<f64>, y: Option<f64>| Some(y? - x?);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let mut delta = CpuDelta {
            processor_secs: d(a.processor, b.processor),
            bench_secs: d(a.bench, b.bench),
            broker_secs: d(a.broker, b.broker),
            host_busy_cores: None,
            other_cores: None,
        };
        if let (Some((b0, t0)), Some((b1, t1))) = (a.host, b.host) {
            if t1 > t0 {
                let wall = (t1 - t0) as f64 / clock_ticks() / cores;
                let busy = (b1 - b0) as f64 / (t1 - t0) as f64 * cores;
                delta.host_busy_cores = Some(busy);
                let ours = delta.processor_secs.unwrap_or(0.0)
                    + delta.bench_secs.unwrap_or(0.0)
                    + delta.broker_secs.unwrap_or(0.0);
                delta.other_cores = Some((busy - ours / wall).max(0.0));
            }
        }
        delta
    }
}

/// Waits (up to `max`) until the host is quiet: fewer than `cores` busy cores over a second,
/// not counting `ignore` (our broker). Returns the last reading.
pub async fn wait_quiet(cores: f64, max: std::time::Duration, ignore: Option<u32>) -> f64 {
    let started = std::time::Instant::now();
    let mut reported = false;
    loop {
        let a = CpuSample::take(None, ignore);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let b = CpuSample::take(None, ignore);
        let d = CpuDelta::between(&a, &b);
        let busy = d.host_busy_cores.unwrap_or(0.0) - d.broker_secs.unwrap_or(0.0);
        if busy < cores || started.elapsed() >= max {
            return busy;
        }
        if !reported {
            eprintln!("[bench] host busy ({busy:.2} cores used by others); waiting up to {max:?} for it to calm down");
            reported = true;
        }
    }
}

/// The CPU model of this machine (`/proc/cpuinfo`), e.g. "AMD EPYC" or "Intel(R) Xeon(R)
/// Processor @ 2.50GHz", with family and model numbers when the name alone does not say.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!("{name} (family {f}, model {m}), {cores} vCPUs"),
        _ => format!("{name}, {cores} vCPUs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_counters() {
        assert!(cpu_secs(None).is_some());
        assert!(status_mib(std::process::id(), "VmHWM").unwrap() > 0.0);
        let (busy, total) = host_jiffies().unwrap();
        assert!(busy <= total);
    }
}
