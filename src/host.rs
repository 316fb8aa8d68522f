//! The machine this process runs on: its name (event file names and run records carry it, so
//! runs from several machines in one log directory stay apart) and the cores it may use.

/// The host name (`localhost` when unknown), safe inside a file name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| s.replace(['/', ' '], "_"))
        .unwrap_or_else(|| "localhost".into())
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
