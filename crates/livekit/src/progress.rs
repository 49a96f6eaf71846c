//! The run's progress on stderr: a bar (indicatif) on a terminal, a line every 10 s otherwise
//! (logs of `scripts/bench-livekit.sh`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::media::Shared;
use crate::metrics::Kind;

/// Runs until aborted.
pub async fn show(shared: Arc<Shared>, warmup: Duration, started: Instant, end: Instant) {
    let total = end.duration_since(started).as_secs().max(1);
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} s  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("bench livekit, {} rooms", shared.options.rooms));
    let _clear = ClearOnDrop(bar.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        let message = if elapsed < warmup {
            "warming up (rooms opening, nothing counted)".to_string()
        } else {
            status(&shared)
        };
        bar.set_position(elapsed.as_secs().min(total));
        bar.set_message(message.clone());
        if !terminal && elapsed.as_secs().is_multiple_of(10) && elapsed.as_secs() > 0 {
            eprintln!("bench livekit: {}/{total} s, {message}", elapsed.as_secs());
        }
    }
}

fn status(shared: &Shared) -> String {
    let figures = shared.recorder.figures();
    let count = |kind: Kind| {
        figures
            .iter()
            .find(|f| f.kind == kind)
            .map_or(0, |f| f.count)
    };
    let misses: u64 = figures.iter().map(|f| f.misses).sum();
    let errors: u64 = shared.recorder.errors().values().sum();
    format!(
        "{} storage ops, {} messages delivered, {misses} deadline misses, {errors} errors",
        count(Kind::Storage),
        count(Kind::Delivery),
    )
}

/// Clears the bar when the task showing it is aborted.
struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
