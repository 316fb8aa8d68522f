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

/// Where a command's progress goes: a bar on a terminal (messages printed above it), plain
/// lines otherwise, nothing but warnings when quiet. A run's trainer and a sweep's launcher
/// each show theirs through one.
pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    progress: Progress,
}

impl Console {
    /// A bar of `len` drawn with `template` when `progress` is `Auto` and stderr is a terminal.
    pub fn new(progress: Progress, len: u64, template: &str) -> Self {
        let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Console { bar, progress }
    }

    /// The bar, when there is one.
    pub fn bar(&self) -> Option<&indicatif::ProgressBar> {
        self.bar.as_ref()
    }

    /// Prints `msg` (above the bar, if any) unless quiet.
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

/// A run's progress: the step bar, or a plain line every twentieth of the run.
pub(super) struct Reporter {
    console: Console,
}

impl Reporter {
    pub fn new(progress: Progress, total: u64, start: u64) -> Self {
        let console = Console::new(
            progress,
            total,
            "{bar:30} {pos}/{len} steps  {msg}  eta {eta}",
        );
        if let Some(bar) = console.bar() {
            bar.set_position(start);
        }
        Reporter { console }
    }

    pub fn step(&self, step: u64, total: u64, loss: f64, tps: f64) {
        match self.console.bar() {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}  {tps:.0} chars/s"));
            }
            None => {
                let every = (total / 20).max(1);
                if step.is_multiple_of(every) || step == total {
                    self.console.line(&format!(
                        "step {step}/{total}  loss {loss:.4}  {tps:.0} chars/s"
                    ));
                }
            }
        }
    }

    pub fn line(&self, msg: &str) {
        self.console.line(msg)
    }

    pub fn finish(&self) {
        self.console.finish()
    }
}
