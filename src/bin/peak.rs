//! The machine's arithmetic ceiling, so that benchmark tables can say how close to it a run is:
//! fp32 FMAs (`vfmadd231ps`, on zmm registers or, without AVX-512, ymm) and bf16 pair products
//! with fp32 accumulation (`vdpbf16ps`; AMX's `tdpbf16ps` tile products where the CPU has
//! them), each in a loop of independent accumulators that never touches memory (the loops
//! `auto` precision measures too, run longer here), on 1 thread and on every core at once; and
//! the AMX block loop as the products run it, its tiles loaded each step from L1. Then
//! each large product of a training step of config H (one thread's group: 2,048 rows), timed in
//! fp32, in bf16 on the AMX tiles, on the AVX512-BF16 unit and in bf16 emulated: what each
//! product gains or costs in bf16 on this CPU; and the recurrence's own time loops (forward with
//! the cell, backward), whose register tiles are ours rather than the `gemm` crate's.
//! `scripts/peak.sh`.

use charlab::model::bf16::Unit;
use charlab::model::gemm::{View, ViewMut};
use charlab::model::precision::{peak_gflops, Peak, Products};
use charlab::model::recurrence::{Backward, Forward, Input, Packed, Scratch};
use charlab::model::simd::Level;
use std::time::Instant;

/// Rounds of the loop per measurement: about a second on the cores we know.
const ITERS: u64 = 50_000_000;

/// A throughput loop on one thread: its GFLOP/s, `None` without the instruction.
type Rate = fn() -> Option<f64>;

/// The best of three measurements of `rate` on `threads` threads at once (GFLOP/s summed over
/// the threads); `None` when the CPU lacks the instruction.
fn measure(rate: Rate, threads: usize) -> Option<f64> {
    let once = || -> Option<f64> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(rate)).collect();
            hs.into_iter().map(|h| h.join().ok().flatten()).sum()
        })
    };
    (0..3).filter_map(|_| once()).reduce(f64::max)
}

/// One product of a step: `[m, k] · [k, n]`, each operand as the model lays it out (`true`:
/// a transposed view of a row-major buffer).
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
}

/// Config H at 1 thread: 2,048 rows (batch 32 × seq 64), H 256, V 4,504, E 128, ~700 distinct
/// chars per window.
const SHAPES: &[Shape] = &[
    Shape {
        name: "decoder: logits",
        m: 2048,
        k: 256,
        n: 4504,
        a_t: false,
        b_t: true,
    },
    Shape {
        name: "decoder: weight gradient",
        m: 4504,
        k: 2048,
        n: 256,
        a_t: true,
        b_t: false,
    },
    Shape {
        name: "decoder: gradient down",
        m: 2048,
        k: 4504,
        n: 256,
        a_t: false,
        b_t: false,
    },
    Shape {
        name: "layer 1: input projection",
        m: 2048,
        k: 256,
        n: 1024,
        a_t: false,
        b_t: true,
    },
    Shape {
        name: "layer k: W gradients",
        m: 1024,
        k: 2048,
        n: 256,
        a_t: true,
        b_t: false,
    },
    Shape {
        name: "layer 1: input gradient",
        m: 2048,
        k: 1024,
        n: 256,
        a_t: false,
        b_t: false,
    },
    Shape {
        name: "layer 0: table",
        m: 700,
        k: 128,
        n: 1024,
        a_t: false,
        b_t: true,
    },
];

/// GFLOP/s of `p` on `s` (best of 5 after a warm-up).
fn product_gflops(s: &Shape, p: Products) -> f64 {
    let a: Vec<f32> = (0..s.m * s.k)
        .map(|i| (i % 97) as f32 * 0.01 - 0.5)
        .collect();
    let b: Vec<f32> = (0..s.k * s.n)
        .map(|i| (i % 89) as f32 * 0.01 - 0.4)
        .collect();
    let mut c = vec![0f32; s.m * s.n];
    fn view(d: &[f32], r: usize, c: usize, t: bool) -> View<'_> {
        if t {
            View::new(d, c, r, r).t()
        } else {
            View::new(d, r, c, c)
        }
    }
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t0 = Instant::now();
        let (av, bv) = (view(&a, s.m, s.k, s.a_t), view(&b, s.k, s.n, s.b_t));
        p.matmul(ViewMut::new(&mut c, s.m, s.n, s.n), av, bv, false);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (s.m * s.k * s.n) as f64 / best / 1e9
}

fn products() {
    println!("the products of one thread's step of config H, GFLOP/s (best of 6):");
    println!("| product | m × k × n | fp32 | bf16 (AMX) | bf16 (AVX512-BF16) | bf16 (emulated) |");
    println!("|---|---|---|---|---|---|");
    let native = charlab::model::bf16::native_available();
    let amx = charlab::model::amx::available();
    for s in SHAPES {
        let fp32 = product_gflops(s, Products::Fp32);
        let on = |yes: bool, unit| {
            yes.then(|| product_gflops(s, Products::Bf16(unit)))
                .map_or("-".into(), |g| format!("{g:.1} ({:.2}×)", g / fp32))
        };
        let (tiles, nat) = (on(amx, Unit::Amx), on(native, Unit::Native));
        let emu = product_gflops(s, Products::Bf16(Unit::Emulated));
        println!(
            "| {} | {}×{}×{} | {fp32:.1} | {tiles} | {nat} | {emu:.1} ({:.2}×) |",
            s.name,
            s.m,
            s.k,
            s.n,
            emu / fp32
        );
    }
}

/// GFLOP/s of one layer's time loops at config H's group (32 rows, H 256, 64 steps), forward
/// (the cell included) and backward (`dh_{t-1}` included), counting the recurrent product only,
/// best of 6 after a warm-up: the figure to set beside the products above.
fn recurrence_gflops(p: Products) -> [f64; 2] {
    let (t_len, nb, h) = (64, 32, 256);
    let hp = h;
    let n = t_len * nb;
    let val = |i: usize, m: usize| (i % m) as f32 * 0.002 - 0.05;
    let w_hh: Vec<f32> = (0..4 * h * h).map(|i| val(i, 97)).collect();
    let xproj: Vec<f32> = (0..n * 4 * hp).map(|i| val(i, 89) * 10.0).collect();
    let bias = vec![0.01f32; 4 * hp];
    let c0 = vec![0f32; nb * hp];
    let level = Level::detect();
    let (mut fwd, mut bwd, mut scratch) =
        (Packed::default(), Packed::default(), Scratch::default());
    fwd.pack(&w_hh, (h, hp), level, p, false);
    bwd.pack(&w_hh, (h, hp), level, p, true);
    let mut hs = vec![0f32; (n + nb) * hp];
    let mut acts = vec![0f32; n * 5 * hp];
    let dh_above: Vec<f32> = (0..n * hp).map(|i| val(i, 83)).collect();
    let mut da = vec![0f32; n * 4 * hp];
    let (mut dbias, mut dh_next, mut dc_next) =
        (vec![0f32; 4 * hp], vec![0f32; nb * hp], vec![0f32; nb * hp]);
    let (mut best_f, mut best_b) = (f64::MAX, f64::MAX);
    for _ in 0..6 {
        let t0 = Instant::now();
        Forward {
            t_len,
            nb,
            h,
            hp,
            input: Input::Rows(&xproj),
            bias: &bias,
            packed: &fwd,
            scratch: &mut scratch,
            c0: &c0,
            hs: &mut hs,
            acts: &mut acts,
        }
        .run(level);
        best_f = best_f.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        Backward {
            t_len,
            nb,
            hp,
            packed: &bwd,
            scratch: &mut scratch,
            acts: &acts,
            c0: &c0,
            dh_above: &dh_above,
            da: &mut da,
            dbias: &mut dbias,
            dh_next: &mut dh_next,
            dc_next: &mut dc_next,
        }
        .run(level);
        best_b = best_b.min(t0.elapsed().as_secs_f64());
    }
    let step = 2.0 * (nb * h * 4 * h) as f64;
    [
        step * t_len as f64 / best_f / 1e9,
        step * (t_len - 1) as f64 / best_b / 1e9,
    ]
}

fn recurrence() {
    let fp32 = recurrence_gflops(Products::Fp32);
    let emu = recurrence_gflops(Products::Bf16(Unit::Emulated));
    let on = |yes: bool, unit| yes.then(|| recurrence_gflops(Products::Bf16(unit)));
    let nat = on(charlab::model::bf16::native_available(), Unit::Native);
    let tiles = on(charlab::model::amx::available(), Unit::Amx);
    let names = ["recurrence: forward with the cell", "recurrence: backward"];
    for (i, name) in names.iter().enumerate() {
        let cell = |g: Option<[f64; 2]>| {
            g.map_or("-".into(), |g| {
                format!("{:.1} ({:.2}×)", g[i], g[i] / fp32[i])
            })
        };
        let (nat, tiles) = (cell(nat), cell(tiles));
        println!(
            "| {name} | 64 × 32×256×1024 | {:.1} | {tiles} | {nat} | {:.1} ({:.2}×) |",
            fp32[i],
            emu[i],
            emu[i] / fp32[i]
        );
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The last: the AMX block loop with its tile loads, the ceiling of every AMX product.
    let units: [(Rate, &str, &str); 4] = [
        (
            || peak_gflops(Peak::Fp32, ITERS),
            "fp32",
            "AVX512F or AVX2 with FMA",
        ),
        (|| peak_gflops(Peak::Bf16, ITERS), "bf16", "AVX512-BF16"),
        (
            || peak_gflops(Peak::Amx, ITERS),
            "bf16 AMX",
            "AMX-BF16 tiles the OS grants",
        ),
        (
            || charlab::model::amx::loop_gflops(ITERS / 16),
            "bf16 AMX block loop (tiles loaded each step, in L1)",
            "AMX-BF16 tiles the OS grants",
        ),
    ];
    for (rate, name, needs) in units {
        match (measure(rate, 1), measure(rate, cores)) {
            (Some(one), Some(all)) => println!(
                "{name} peak: {one:.1} GFLOP/s on 1 thread, {all:.1} GFLOP/s on {cores} threads"
            ),
            _ => println!("{name} peak: not measured (this CPU has no {needs})"),
        }
    }
    products();
    recurrence();
}
