//! Progress of a long operator job on standard error: a bar redrawn in place when standard error
//! is a terminal, otherwise (logs, CI, pipes) one plain line every [`PROGRESS_EVERY`], so the
//! output stays readable either way. Standard output is left to the job's results.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// How often progress lines are printed when standard error is not a terminal.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A text progress bar: `[#####-----]  500/1000`.
pub fn render_bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (done.min(total) as u128 * width as u128 / total as u128) as usize
    };
    format!(
        "[{}{}] {done:>w$}/{total}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        w = total.to_string().len()
    )
}

/// Progress on standard error: a redrawn bar on a terminal, a line every [`PROGRESS_EVERY`]
/// otherwise.
pub struct Progress {
    /// What is progressing, first word of each line.
    label: &'static str,
    total: u64,
    tty: bool,
    last: Option<Duration>,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        Progress {
            label,
            total,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Reports `done` of the total, `elapsed` after the start, when the last report is old enough.
    pub fn show(&mut self, done: u64, elapsed: Duration) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            PROGRESS_EVERY
        };
        let due = match self.last {
            None => elapsed >= every,
            Some(l) => elapsed >= l + every,
        };
        if !due {
            return;
        }
        self.last = Some(elapsed);
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(
                err,
                "\r  {}  {rate:.0}/s ",
                render_bar(done, self.total, 30)
            );
        } else {
            let _ = writeln!(
                err,
                "{} progress: {done}/{} acknowledged after {:.0}s ({rate:.0}/s)",
                self.label,
                self.total,
                elapsed.as_secs_f64()
            );
        }
    }

    /// Draws the final bar and ends its line (a terminal only; lines need no ending).
    pub fn finish(&mut self, done: u64, elapsed: Duration) {
        if self.tty && self.last.is_some() {
            self.last = None;
            self.show(done, elapsed.max(Duration::from_millis(200)));
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_progress() {
        assert_eq!(render_bar(0, 10, 10), "[----------]  0/10");
        assert_eq!(render_bar(5, 10, 10), "[#####-----]  5/10");
        assert_eq!(render_bar(10, 10, 10), "[##########] 10/10");
        assert_eq!(render_bar(0, 0, 4), "[####] 0/0");
    }
}
