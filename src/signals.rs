//! SIGINT/SIGTERM (and SIGUSR1, which cluster schedulers send before a time limit) become a flag
//! that the training loop polls between steps: the run checkpoints, flushes its events, records
//! status `interrupted` and exits, instead of dying mid-write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the handlers (idempotent). Without this call `requested` is always `None`.
pub fn install() {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ] {
        // Registration fails only for forbidden signals, which these are not.
        let _ = signal_hook::flag::register_usize(sig, Arc::clone(flag), sig as usize);
    }
}

/// The signal received, if any.
pub fn requested() -> Option<i32> {
    FLAG.get()
        .map(|f| f.load(Ordering::Relaxed))
        .filter(|&s| s != 0)
        .map(|s| s as i32)
}

/// A signal's name for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// The conventional exit code after `sig` (128 + signal number).
pub fn exit_code(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}
