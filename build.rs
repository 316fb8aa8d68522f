//! Records, at build time, what `run.json` reports about the binary: the candle version it was
//! built with (from Cargo.lock) and the source's git commit, if any. With the `cuda` feature, also
//! compiles the CUDA path's kernels to PTX with nvcc (`$CUDA_ROOT/bin/nvcc`, else on the PATH),
//! for `$CUDA_COMPUTE_CAP` (default 90); the default build needs none of it.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
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

/// `src/model/fused/kernels.cu` → `$OUT_DIR/fused_kernels.ptx`.
fn compile_kernels() {
    let src = "src/model/fused/kernels.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(out.join("fused_kernels.ptx"))
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "nvcc ({}) could not compile {src}: {other:?}; see scripts/build-cuda.sh",
            nvcc.display()
        ),
    }
}
