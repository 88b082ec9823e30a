//! Facts a node reports in its capabilities: RAM, cores and free disk (probed from the OS), and
//! measured speeds (memory bandwidth measured here; matmul and disk speed measured by the
//! caller, which owns the kernels) cached in `<state>/bench.json` so start-up stays fast.

use std::path::Path;
use std::time::Instant;

use crate::wire::Capabilities;

/// Cache file of the self-benchmark, in the state dir.
pub const BENCH_FILE: &str = "bench.json";

/// What the OS says about this machine now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemProbe {
    pub total_ram: u64,
    /// `MemAvailable` (free + reclaimable cache).
    pub free_ram: u64,
    pub cores: u32,
    /// Free bytes on the file system of the probed directory.
    pub free_disk: u64,
}

/// Probes RAM (Linux `/proc/meminfo`), cores and free disk space under `dir`.
pub fn probe(dir: &Path) -> SystemProbe {
    let (total_ram, free_ram) = meminfo().unwrap_or((0, 0));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    SystemProbe {
        total_ram,
        free_ram,
        cores,
        free_disk: free_disk(dir).unwrap_or(0),
    }
}

fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((
        field("MemTotal:")?,
        field("MemAvailable:").or_else(|| field("MemFree:"))?,
    ))
}

fn free_disk(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable statvfs storage.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(st.f_bavail) * u64::from(st.f_frsize))
}

/// Memory bandwidth in GB/s (read + write bytes of a 64 MiB copy, best of 5).
pub fn measure_mem_bw() -> f64 {
    const LEN: usize = 64 << 20;
    let src = vec![1u8; LEN];
    let mut dst = vec![0u8; LEN];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (2 * LEN) as f64 / best.max(1e-9) / 1e9
}

/// Measured speeds, cached in the state dir.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchResults {
    /// Identifies the machine/build the numbers belong to; a different key re-runs the bench.
    pub key: String,
    pub matmul_gflops: f64,
    pub mem_bw_gbs: f64,
    pub disk_read_gbs: f64,
}

/// The cached results for `key` from `<state_dir>/bench.json`, or runs `run` and stores them.
pub fn cached_bench(
    state_dir: &Path,
    key: &str,
    run: impl FnOnce() -> BenchResults,
) -> BenchResults {
    let path = state_dir.join(BENCH_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<BenchResults>(&text) {
            Ok(b) if b.key == key => return b,
            Ok(_) => {
                tracing::info!("benchmark cache is for another machine or build; re-measuring")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable benchmark cache")
            }
        }
    }
    let mut results = run();
    results.key = key.to_string();
    if let Ok(text) = serde_json::to_string_pretty(&results) {
        let _ = std::fs::create_dir_all(state_dir);
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache benchmark results");
        }
    }
    results
}

/// Capabilities from a probe, measured speeds and the memory budget (models and addresses are
/// the caller's to add).
pub fn capabilities(probe: &SystemProbe, bench: &BenchResults, mem_budget: u64) -> Capabilities {
    Capabilities {
        mem_budget,
        free_ram: probe.free_ram,
        cores: probe.cores,
        matmul_gflops: bench.matmul_gflops,
        mem_bw_gbs: bench.mem_bw_gbs,
        disk_read_gbs: bench.disk_read_gbs,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sees_this_machine() {
        let p = probe(&std::env::temp_dir());
        assert!(p.total_ram > 0 && p.free_ram <= p.total_ram, "{p:?}");
        assert!(p.cores >= 1);
        assert!(p.free_disk > 0);
        assert!(measure_mem_bw() > 0.1);
    }

    #[test]
    fn bench_is_cached_per_key() {
        let dir = std::env::temp_dir().join(format!("dwarfstar-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mk = |g| BenchResults {
            key: String::new(),
            matmul_gflops: g,
            mem_bw_gbs: 1.0,
            disk_read_gbs: 2.0,
        };
        assert_eq!(cached_bench(&dir, "a", || mk(5.0)).matmul_gflops, 5.0);
        assert_eq!(
            cached_bench(&dir, "a", || mk(7.0)).matmul_gflops,
            5.0,
            "cached"
        );
        assert_eq!(
            cached_bench(&dir, "b", || mk(7.0)).matmul_gflops,
            7.0,
            "new key re-runs"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
