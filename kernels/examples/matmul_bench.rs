//! Micro-benchmark of the matmul hot path (not a test): Q4_1 matvec and
//! prefill shapes of SmolLM2-135M, and the matmul-only cost of one decode
//! token of the whole model (30 layers + the Q8_0 output head), on 1 and 2
//! rayon threads.
//!
//! `cargo run --release -p dwarfstar-kernels --example matmul_bench [quick]`

use std::time::{Duration, Instant};

use dwarfstar_kernels::matmul::matmul_many;
use dwarfstar_kernels::{matmul, quantize_row, GgmlType, MatRef};

struct Weights {
    ty: GgmlType,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Weights {
    fn random(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Weights {
        let mut s = seed | 1;
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let mut data = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
        quantize_row(ty, &x, &mut data).unwrap();
        Weights {
            ty,
            data,
            rows,
            cols,
        }
    }

    fn mat(&self) -> MatRef<'_> {
        MatRef {
            ty: self.ty,
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// Seconds per call of `f`: the best of several samples (the machine is
/// shared, so the minimum is the least disturbed figure), run for `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    // Calls per sample: about 0.3 ms each (short samples dodge preemption).
    let t0 = Instant::now();
    f();
    let per = (0.0003 / t0.elapsed().as_secs_f64().max(1e-9))
        .ceil()
        .max(1.0) as u32;
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let s = Instant::now();
        for _ in 0..per {
            f();
        }
        best = best.min(s.elapsed().as_secs_f64() / f64::from(per));
    }
    best
}

/// `one TYPE ROWS COLS TOKENS ITERS`: one shape on the calling thread, for
/// `perf stat` (cycles per call do not care about a busy machine).
fn one(args: &[String]) {
    let ty = GgmlType::from_name(&args[0]).expect("type");
    let p = |i: usize| args[i].parse::<usize>().expect("number");
    let (rows, cols, n_tok, iters) = (p(1), p(2), p(3), p(4));
    let w = Weights::random(ty, rows, cols, 1);
    let x: Vec<f32> = (0..n_tok * cols)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let mut out = vec![0.0; n_tok * rows];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // The same products pair by pair through the dispatch vec_dot, to see
    // what the tiles gain (A/B alternated, best of 5 each).
    let k = dwarfstar_kernels::type_kernels(ty).unwrap();
    let rb = ty.row_bytes(cols).unwrap();
    let ab = k.vec_dot_type.row_bytes(cols).unwrap();
    let mut act = vec![0u8; ab * n_tok];
    quantize_row(k.vec_dot_type, &x, &mut act).unwrap();
    let vd = k.vec_dot.unwrap();
    pool.install(|| {
        let (mut best_tiles, mut best_pairs) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..iters {
                matmul(w.mat(), &x, n_tok, &mut out).unwrap();
            }
            best_tiles = best_tiles.min(start.elapsed().as_secs_f64() / iters as f64);
            let start = Instant::now();
            for _ in 0..iters {
                for t in 0..n_tok {
                    for r in 0..rows {
                        out[t * rows + r] = vd(
                            cols,
                            &w.data[r * rb..(r + 1) * rb],
                            &act[t * ab..(t + 1) * ab],
                        );
                    }
                }
            }
            best_pairs = best_pairs.min(start.elapsed().as_secs_f64() / iters as f64);
        }
        for (what, t) in [("matmul", best_tiles), ("pairs ", best_pairs)] {
            println!(
                "{ty} {rows}x{cols} x{n_tok} {what}: {:8.1} us/call, {:5.1} GB/s, {:8.0} tok/s",
                t * 1e6,
                w.data.len() as f64 / t * 1e-9,
                n_tok as f64 / t
            );
        }
    });
}

/// The Q4_1 layers and Q8_0 head of SmolLM2-135M, random values.
fn model() -> (Vec<Vec<Weights>>, Weights) {
    let layer_shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let layers = (0..30)
        .map(|l| {
            layer_shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| Weights::random(GgmlType::Q4_1, r, c, (l * 7 + i) as u64 + 11))
                .collect()
        })
        .collect();
    (layers, Weights::random(GgmlType::Q8_0, 49152, 576, 5))
}

/// `decode THREADS [SAMPLES [TOKENS]]`: the matmuls of one decode step
/// (TOKENS = 1, with the output head) or of a prefill batch (TOKENS > 1,
/// layers only: the head runs on the last token alone), best of SAMPLES.
fn decode(args: &[String]) {
    let threads: usize = args.first().map_or(1, |a| a.parse().expect("threads"));
    let samples: usize = args.get(1).map_or(50, |a| a.parse().expect("samples"));
    let n_tok: usize = args.get(2).map_or(1, |a| a.parse().expect("tokens"));
    let (layers, head) = model();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let x1 = vec![0.01f32; 1536 * n_tok];
    let mut out = vec![0.0; 1536 * n_tok.max(32)];
    if n_tok > 1 {
        pool.install(|| {
            let mut best = f64::MAX;
            for _ in 0..samples {
                let s = Instant::now();
                for layer in &layers {
                    for w in layer {
                        let (xs, os) = (n_tok * w.cols, n_tok * w.rows);
                        matmul(w.mat(), &x1[..xs], n_tok, &mut out[..os]).unwrap();
                    }
                }
                best = best.min(s.elapsed().as_secs_f64());
            }
            println!(
                "prefill {n_tok} tokens, layer matmuls, {threads} thread(s): best {:.2} ms ({:.0} tok/s)",
                best * 1e3,
                n_tok as f64 / best
            );
        });
        return;
    }
    pool.install(|| {
        let mut best = f64::MAX;
        let mut total = 0.0;
        for _ in 0..samples {
            let s = Instant::now();
            for layer in &layers {
                for w in layer {
                    matmul(w.mat(), &x1[..w.cols], 1, &mut out[..w.rows]).unwrap();
                }
            }
            matmul(head.mat(), &x1[..576], 1, &mut out).unwrap();
            let t = s.elapsed().as_secs_f64();
            best = best.min(t);
            total += t;
        }
        println!(
            "decode matmuls, {threads} thread(s): best {:.2} ms ({:.0} tok/s), mean {:.2} ms",
            best * 1e3,
            1.0 / best,
            total / samples as f64 * 1e3
        );
        // The same with Q/K/V and gate/up fused by matmul_many.
        let (mut best, mut total) = (f64::MAX, 0.0);
        let mut o: Vec<Vec<f32>> = (0..3).map(|_| vec![0.0f32; 1536]).collect();
        for _ in 0..samples {
            let s = Instant::now();
            for l in &layers {
                let [o0, o1, o2] = &mut o[..] else { unreachable!() };
                let mut qkv = [
                    (l[0].mat(), &mut o0[..576]),
                    (l[1].mat(), &mut o1[..192]),
                    (l[2].mat(), &mut o2[..192]),
                ];
                matmul_many(&mut qkv, &x1[..576], 1).unwrap();
                matmul(l[3].mat(), &x1[..576], 1, &mut out[..576]).unwrap();
                let mut gu = [(l[4].mat(), &mut o0[..]), (l[5].mat(), &mut o1[..])];
                matmul_many(&mut gu, &x1[..576], 1).unwrap();
                matmul(l[6].mat(), &x1[..1536], 1, &mut out[..576]).unwrap();
            }
            matmul(head.mat(), &x1[..576], 1, &mut out).unwrap();
            let t = s.elapsed().as_secs_f64();
            best = best.min(t);
            total += t;
        }
        println!(
            "decode matmuls with matmul_many, {threads} thread(s): best {:.2} ms ({:.0} tok/s), mean {:.2} ms",
            best * 1e3,
            1.0 / best,
            total / samples as f64 * 1e3
        );
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("one") => return one(&args[1..]),
        Some("decode") => return decode(&args[1..]),
        _ => {}
    }
    let quick = std::env::args().any(|a| a == "quick");
    let budget = Duration::from_millis(if quick { 150 } else { 400 });
    let cases = [
        ("ffn_down Q4_1 576x1536", GgmlType::Q4_1, 576, 1536),
        ("ffn_up   Q4_1 1536x576", GgmlType::Q4_1, 1536, 576),
        ("attn_q   Q4_1 576x576", GgmlType::Q4_1, 576, 576),
        ("attn_k   Q4_1 192x576", GgmlType::Q4_1, 192, 576),
        ("output   Q8_0 49152x576", GgmlType::Q8_0, 49152, 576),
    ];
    // One decode token of SmolLM2-135M: per layer q,k,v,o,gate,up,down.
    let layer_shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let layers: Vec<Vec<Weights>> = (0..30)
        .map(|l| {
            layer_shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| Weights::random(GgmlType::Q4_1, r, c, (l * 7 + i) as u64 + 11))
                .collect()
        })
        .collect();
    let head = Weights::random(GgmlType::Q8_0, 49152, 576, 5);
    let model_bytes: usize =
        layers.iter().flatten().map(|w| w.data.len()).sum::<usize>() + head.data.len();

    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        println!("== {threads} thread(s), calls made inside pool.install ==");
        pool.install(|| {
            for &(name, ty, rows, cols) in &cases {
                let w = Weights::random(ty, rows, cols, 1);
                for n_tok in [1usize, 64] {
                    let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
                    let mut out = vec![0.0; n_tok * rows];
                    let t = time(budget, || matmul(w.mat(), &x, n_tok, &mut out).unwrap());
                    println!(
                        "{name} x{n_tok:<3} {:9.1} us  {:6.1} GB/s weights/call  {:9.0} tok/s-equiv",
                        t * 1e6,
                        w.data.len() as f64 / t * 1e-9,
                        n_tok as f64 / t,
                    );
                }
            }
            let x1 = vec![0.01f32; 1536];
            let mut out = vec![0.0; 49152];
            let t = time(budget, || {
                for layer in &layers {
                    for w in layer {
                        matmul(w.mat(), &x1[..w.cols], 1, &mut out[..w.rows]).unwrap();
                    }
                }
                matmul(head.mat(), &x1[..576], 1, &mut out).unwrap();
            });
            println!(
                "decode token, matmuls only (211 calls, {:.1} MB): {:.2} ms = {:.0} tok/s, {:.1} GB/s",
                model_bytes as f64 * 1e-6,
                t * 1e3,
                1.0 / t,
                model_bytes as f64 / t * 1e-9
            );
            let n_tok = 64;
            let xp = vec![0.01f32; n_tok * 1536];
            let mut outp = vec![0.0; n_tok * 1536];
            let t = time(budget, || {
                for layer in &layers {
                    for w in layer {
                        matmul(w.mat(), &xp[..n_tok * w.cols], n_tok, &mut outp[..n_tok * w.rows]).unwrap();
                    }
                }
            });
            println!("prefill 64 tokens, layer matmuls only (no head): {:.2} ms = {:.0} tok/s", t * 1e3, n_tok as f64 / t);
        });
        if threads > 1 {
            println!("== {threads} threads, decode calls from outside the pool ==");
            let x1 = vec![0.01f32; 1536];
            let mut out = vec![0.0; 49152];
            let t = time(budget, || {
                for layer in &layers {
                    for w in layer {
                        pool.install(|| {
                            matmul(w.mat(), &x1[..w.cols], 1, &mut out[..w.rows]).unwrap()
                        });
                    }
                }
                pool.install(|| matmul(head.mat(), &x1[..576], 1, &mut out).unwrap());
            });
            println!(
                "decode token, matmuls only, one install per call: {:.2} ms = {:.0} tok/s",
                t * 1e3,
                1.0 / t
            );
        }
    }
}
