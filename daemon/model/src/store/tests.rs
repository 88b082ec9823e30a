//! The store against a synthetic file: every byte handed out equals the
//! file's, the budget holds, eviction and prefetch are counted.

use std::path::PathBuf;
use std::sync::Arc;

use dwarfstar_gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo};

use super::*;

const PAGE: u64 = 4096;

/// A file with one F32 tensor of `n_bytes` pseudo-random bytes.
fn blob(name: &str, n_bytes: usize) -> (PathBuf, Arc<GgufFile>) {
    let data: Vec<u8> = (0..n_bytes)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut w = GgufWriter::new(32).expect("writer");
    w.add_kv("general.architecture", "blob").expect("kv");
    w.add_tensor("blob", &[n_bytes as u64 / 4], GgmlType::F32, data)
        .expect("tensor");
    let p = std::env::temp_dir().join(format!(
        "dwarfstar-store-{name}-{}.gguf",
        std::process::id()
    ));
    w.write_to_path(&p).expect("write");
    let f = Arc::new(GgufFile::open(&p).expect("open"));
    (p, f)
}

fn r(off: u64, len: u64) -> ByteRange {
    ByteRange { off, len }
}

/// 4 layers of 3 pages; layers 1..4 have 8 experts of two 1-page stacks.
fn moe_plan() -> Plan {
    let mut layers = Vec::new();
    let mut experts = Vec::new();
    let mut off = 2 * PAGE + 100;
    for il in 0..4 {
        layers.push(vec![r(off, 3 * PAGE - 200)]);
        off += 3 * PAGE;
        experts.push((il > 0).then(|| {
            let stacks = vec![
                StackRange { off, slice: PAGE },
                StackRange {
                    off: off + 8 * PAGE,
                    slice: PAGE,
                },
            ];
            off += 16 * PAGE;
            ExpertLayout {
                stacks,
                n: 8,
                held: Vec::new(),
            }
        }));
    }
    Plan {
        global: vec![r(0, 2 * PAGE)],
        layers,
        experts,
        n_expert_used: 2,
    }
}

fn stack_info(p: &Plan, il: usize, si: usize) -> TensorInfo {
    let s = p.experts[il].as_ref().expect("moe layer").stacks[si];
    TensorInfo {
        name: format!("blk.{il}.stack{si}"),
        dims: vec![],
        ty: GgmlType::F32,
        offset: s.off,
        n_bytes: s.slice * 8,
    }
}

fn check(src: &dyn WeightBytes, file: &GgufFile, rg: ByteRange) {
    let got = src.range(rg.off, rg.len).expect("held");
    assert!(
        got == file.range(rg.off, rg.len).expect("in file"),
        "bytes at {}",
        rg.off
    );
}

#[test]
fn paged_bytes_equal_the_file_and_stay_in_budget() {
    let plan = moe_plan();
    let (path, file) = blob("moe", (2 + 4 * 3 + 3 * 16) as usize * PAGE as usize + 4096);
    // Global 2 + 4 layers of 3-4 pages + 6 expert units of 2-3 pages at least.
    for mode in [IoMode::Direct, IoMode::Buffered] {
        let mut cfg = StoreConfig::new(40 * PAGE);
        cfg.io_mode = mode;
        let st = WeightStore::new(file.clone(), &plan, &cfg).expect("store");
        assert!(st.is_paged());
        check(st.resident(), &file, plan.global[0]);
        let mut rng = 12345u64;
        let mut uses = 0;
        for step in 0..60 {
            st.begin_pass(1);
            for il in 0..4 {
                let l = st.layer(il).expect("layer");
                check(&l, &file, plan.layers[il][0]);
                drop(l);
                let Some(x) = &plan.experts[il] else { continue };
                if il + 1 < 4 && step % 2 == 0 {
                    st.prefetch_experts(il + 1, &[(step % 8), (step * 3 % 8)]);
                }
                // Skewed routing: experts 0 and 1 most of the time.
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let a = if rng >> 62 == 0 {
                    (rng >> 40) as usize % 8
                } else {
                    0
                };
                let b = if rng >> 61 & 1 == 0 {
                    1
                } else {
                    (rng >> 20) as usize % 8
                };
                let want: Vec<(usize, usize)> = if a == b {
                    vec![(a, 1)]
                } else {
                    vec![(a, 1), (b, 1)]
                };
                uses += want.len() as u64;
                let order = st.want_experts(il, &want);
                assert_eq!(order.len(), want.len());
                for e in order {
                    for si in 0..2 {
                        let g = st.expert(&stack_info(&plan, il, si), e).expect("expert");
                        check(&g, &file, x.ranges(e)[si]);
                    }
                }
                let s = st.stats();
                assert!(
                    s.resident_bytes <= s.budget_bytes,
                    "{} > {}",
                    s.resident_bytes,
                    s.budget_bytes
                );
            }
        }
        let s = st.stats();
        assert_eq!(
            s.io_mode,
            if mode == IoMode::Direct {
                "direct"
            } else {
                "buffered"
            }
        );
        assert_eq!(s.tokens, 60);
        assert!(s.expert_misses > 0 && s.expert_hits > 0, "{s:?}");
        assert!(
            s.evictions > 0 && s.bytes_read > 0 && s.prefetches > 0,
            "{s:?}"
        );
        assert!(s.expert_hit_rate() > 0.0 && s.expert_hit_rate() < 1.0);
        // Every use counted once.
        assert_eq!(
            s.expert_hits + s.expert_prefetch_hits + s.expert_misses,
            uses
        );
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn streamed_layers_cycle_through_the_window() {
    let plan = Plan {
        global: vec![r(0, PAGE)],
        layers: (0..6)
            .map(|i| vec![r(PAGE + i * 2 * PAGE, 2 * PAGE)])
            .collect(),
        experts: vec![None; 6],
        n_expert_used: 0,
    };
    let (path, file) = blob("dense", 14 * PAGE as usize);
    // Aligned sizes depend on where the data section starts.
    let g = layout(&plan.global, file.data_offset()).bytes as u64;
    let l = layout(&plan.layers[0], file.data_offset()).bytes as u64;
    // Global + window of 2 + one pinned layer (less than the 13 pages
    // of weights, which would be mapped).
    let budget = g + 3 * l;
    let st = WeightStore::new(file.clone(), &plan, &StoreConfig::new(budget)).expect("store");
    let s0 = st.stats();
    assert_eq!(s0.streamed_layers, 5);
    assert_eq!(s0.pinned_bytes, g + l);
    for _ in 0..5 {
        st.begin_pass(1);
        for il in 0..6 {
            let l = st.layer(il).expect("layer");
            check(&l, &file, plan.layers[il][0]);
            check(&l, &file, plan.global[0]);
        }
        assert!(st.stats().resident_bytes <= budget);
    }
    let s = st.stats();
    // Each pass reads the 5 streamed layers, all but the first ahead of
    // time.
    assert_eq!(s.bytes_read, 5 * 5 * l);
    assert_eq!(s.layer_hits + s.layer_prefetch_hits + s.layer_misses, 25);
    assert_eq!(s.layer_misses, 1, "{s:?}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn budgets_that_fit_map_and_budgets_too_small_fail() {
    let plan = moe_plan();
    let (path, file) = blob("fit", (2 + 4 * 3 + 3 * 16) as usize * PAGE as usize + 4096);
    let st = WeightStore::new(file.clone(), &plan, &StoreConfig::new(1 << 30)).expect("store");
    assert!(!st.is_paged());
    assert_eq!(st.stats().io_mode, "mapped");
    let Err(e) = WeightStore::new(file, &plan, &StoreConfig::new(8 * PAGE)) else {
        panic!("8 pages should be too small");
    };
    assert!(matches!(e, StoreError::Budget { .. }), "{e}");
    assert!(e.to_string().contains("too small"));
    let _ = std::fs::remove_file(path);
}
