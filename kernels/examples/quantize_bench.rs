//! Times `dwarfstar_kernels::quantize` on a random matrix.
//!
//! `cargo run --release -p dwarfstar-kernels --example quantize_bench -- \
//!     [TYPE=Q4_K] [ROWS=4096] [COLS=14336] [imatrix|none] [serial|parallel]`

use std::time::Instant;

use dwarfstar_kernels::quantize::{quantize, quantize_parallel};
use dwarfstar_kernels::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let name = arg(0, "Q4_K");
    let Some(ty) = GgmlType::ALL
        .into_iter()
        .find(|t| format!("{t:?}").eq_ignore_ascii_case(&name))
    else {
        eprintln!("unknown type {name}");
        std::process::exit(2);
    };
    let rows: usize = arg(1, "4096").parse().unwrap_or(4096);
    let cols: usize = arg(2, "14336").parse().unwrap_or(14336);
    let with_imatrix = arg(3, "imatrix") == "imatrix";
    let parallel = arg(4, "parallel") == "parallel";

    // xorshift64: roughly normal values (sum of uniforms), skewed weights.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..rows * cols)
        .map(|_| 0.02 * (next() + next() + next() - 1.5))
        .collect();
    let w: Vec<f32> = (0..cols).map(|_| 10f32.powf(4.0 * next() - 2.0)).collect();
    let qw = with_imatrix.then_some(w.as_slice());
    let mut dst = vec![0u8; ty.row_bytes(cols).unwrap_or(0) * rows];

    let t = Instant::now();
    let run = if parallel {
        quantize_parallel
    } else {
        quantize
    };
    match run(ty, &x, cols, qw, &mut dst) {
        Ok(n) => println!(
            "{ty:?} {rows}x{cols} {} {}: {n} bytes in {:.3} s ({} threads available)",
            if with_imatrix {
                "imatrix"
            } else {
                "no imatrix"
            },
            if parallel { "parallel" } else { "serial" },
            t.elapsed().as_secs_f64(),
            rayon::current_num_threads()
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
