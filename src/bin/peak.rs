//! The machine's arithmetic ceiling, so that benchmark tables can say how close to it a run is:
//! fp32 FMAs (`vfmadd231ps`) and bf16 pair products with fp32 accumulation (`vdpbf16ps`), each
//! in a loop of independent accumulators that never touches memory (the loops `auto` precision
//! measures too, run longer here), on 1 thread and on every core at once. `scripts/peak.sh`.

use charlab::model::precision::{peak_gflops, Peak};

/// Rounds of the loop per measurement: about a second on the cores we know.
const ITERS: u64 = 50_000_000;

/// The best of three measurements of `kind` on `threads` threads at once (GFLOP/s summed over
/// the threads); `None` when the CPU lacks the instruction.
fn measure(kind: Peak, threads: usize) -> Option<f64> {
    let once = || -> Option<f64> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || peak_gflops(kind, ITERS)))
                .collect();
            hs.into_iter().map(|h| h.join().ok().flatten()).sum()
        })
    };
    (0..3).filter_map(|_| once()).reduce(f64::max)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (kind, name, needs) in [
        (Peak::Fp32, "fp32", "AVX512F"),
        (Peak::Bf16, "bf16", "AVX512-BF16"),
    ] {
        match (measure(kind, 1), measure(kind, cores)) {
            (Some(one), Some(all)) => println!(
                "{name} peak: {one:.1} GFLOP/s on 1 thread, {all:.1} GFLOP/s on {cores} threads"
            ),
            _ => println!("{name} peak: not measured (this CPU has no {needs})"),
        }
    }
}
