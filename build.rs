//! Records, at build time, what `run.json` reports about the binary: the candle version it was
//! built with (from Cargo.lock) and the source's git commit, if any.
use std::process::Command;

fn main() {
    let candle = std::fs::read_to_string("Cargo.lock")
        .ok()
        .and_then(|lock| {
            let at = lock.find("name = \"candle-core\"")?;
            let rest = &lock[at..];
            let v = rest.split("version = \"").nth(1)?;
            Some(v.split('"').next()?.to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CHARLAB_CANDLE_VERSION={candle}");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=CHARLAB_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
