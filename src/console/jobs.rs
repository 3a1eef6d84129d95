//! Replay jobs started from the console: the CLI's replay job ([`crate::ops::replay`]) run in a
//! task of the console, its progress counted for the progress page, its result kept (in
//! memory, the last [`KEEP`] jobs) for the page and the API. A job's end is audited.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::ops::replay::{Observed, ReplayArgs, Summary};

/// Jobs kept for their pages.
pub const KEEP: usize = 50;

/// Where a job is.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done {
        run_id: String,
        produced: u64,
        planned: usize,
        skipped: usize,
    },
    Failed {
        error: String,
    },
}

pub struct Job {
    pub id: String,
    pub actor: String,
    pub selection: String,
    pub args: ReplayArgs,
    pub observed: Observed,
    pub state: Mutex<JobState>,
    /// The job's report (the CLI's standard output).
    pub report: Mutex<String>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub actor: String,
    pub selection: String,
    pub planned: u64,
    pub produced: u64,
    #[serde(flatten)]
    pub state: JobState,
    pub report: String,
}

impl Job {
    pub fn view(&self) -> JobView {
        JobView {
            id: self.id.clone(),
            actor: self.actor.clone(),
            selection: self.selection.clone(),
            planned: self.observed.planned.load(Ordering::Relaxed),
            produced: self.observed.produced.load(Ordering::Relaxed),
            state: self.state.lock().expect("job lock").clone(),
            report: self.report.lock().expect("job lock").clone(),
        }
    }

    /// Records how the run ended.
    pub fn finish(&self, result: &anyhow::Result<Summary>, report: String) {
        *self.report.lock().expect("job lock") = report;
        *self.state.lock().expect("job lock") = match result {
            Ok(s) => JobState::Done {
                run_id: s.run_id.clone(),
                produced: s.produced,
                planned: s.planned,
                skipped: s.skipped.values().sum(),
            },
            Err(e) => JobState::Failed {
                error: format!("{e:#}"),
            },
        };
    }
}

/// The console's jobs, newest last.
#[derive(Default)]
pub struct Jobs(Mutex<VecDeque<Arc<Job>>>);

impl Jobs {
    pub fn add(&self, actor: &str, args: ReplayArgs) -> Arc<Job> {
        let job = Arc::new(Job {
            id: format!("job_{}", crate::console::auth::new_nonce()),
            actor: actor.to_string(),
            selection: if args.all {
                "every failed delivery".into()
            } else {
                args.select.describe()
            },
            args,
            observed: Observed::default(),
            state: Mutex::new(JobState::Running),
            report: Mutex::new(String::new()),
        });
        let mut jobs = self.0.lock().expect("jobs lock");
        jobs.push_back(job.clone());
        while jobs.len() > KEEP {
            jobs.pop_front();
        }
        job
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.0
            .lock()
            .expect("jobs lock")
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }
}
