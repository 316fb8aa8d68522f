//! What a run shows while it trains: a progress bar on a terminal, about twenty plain lines per
//! run otherwise (readable in a log), nothing but warnings when quiet.

use std::io::IsTerminal;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines only.
    Lines,
    /// Nothing but warnings.
    Quiet,
}

/// Prints `msg` on stderr unless quiet.
pub fn log_line(progress: Progress, msg: &str) {
    if progress != Progress::Quiet {
        eprintln!("{msg}");
    }
}

pub(super) struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    progress: Progress,
}

impl Reporter {
    pub fn new(progress: Progress, total: u64, start: u64) -> Self {
        let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(start);
            bar
        });
        Reporter { bar, progress }
    }

    pub fn step(&self, step: u64, total: u64, loss: f64, tps: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}  {tps:.0} chars/s"));
            }
            None => {
                let every = (total / 20).max(1);
                if step.is_multiple_of(every) || step == total {
                    log_line(
                        self.progress,
                        &format!("step {step}/{total}  loss {loss:.4}  {tps:.0} chars/s"),
                    );
                }
            }
        }
    }

    pub fn line(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => log_line(self.progress, msg),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
