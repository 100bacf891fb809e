//! Progress of `synthd process`: on a terminal, an indicatif bar with
//! studies done, instances written per second and the ETA; elsewhere (Slurm
//! log files, journald, `kubectl logs`) one plain line per study, which
//! `grep` and log shippers handle and a bar's carriage returns would garble.

use crate::phi::StudyKey;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    instances: u64,
    started: Instant,
    shard: String,
}

impl Progress {
    /// `total`: the studies this run still has to write.
    pub fn new(total: usize, terminal: bool, shard: String) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {pos}/{len} studies  {msg}  {elapsed} elapsed, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("#>."),
            );
            bar.set_prefix(format!("shard {shard}"));
            bar.set_message("0.0 instances/s");
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            instances: 0,
            started: Instant::now(),
            shard,
        }
    }

    /// A study is written: `instances` outputs in `seconds`.
    pub fn study_done(&mut self, study: &StudyKey, inputs: usize, instances: u64, seconds: f64) {
        self.done += 1;
        self.instances += instances;
        let rate = self.instances as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{rate:.1} instances/s"));
                bar.inc(1);
            }
            None => {
                let eta = self.eta_seconds();
                eprintln!(
                    "progress: shard {} study {}/{} {study}: {inputs} inputs, {instances} instances written in {seconds:.1} s; \
                     {rate:.1} instances/s, ETA {eta:.0} s",
                    self.shard, self.done, self.total
                );
            }
        }
    }

    fn eta_seconds(&self) -> f64 {
        let per_study = self.started.elapsed().as_secs_f64() / self.done.max(1) as f64;
        per_study * (self.total - self.done) as f64
    }

    /// Ends the bar, or prints the plain summary line.
    pub fn finish(self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = self.instances as f64 / seconds.max(1e-3);
        match self.bar {
            Some(bar) => bar.finish_with_message(format!("{rate:.1} instances/s")),
            None => eprintln!(
                "progress: shard {} done: {} studies, {} instances in {seconds:.1} s ({rate:.1} instances/s)",
                self.shard, self.done, self.instances
            ),
        }
    }
}
