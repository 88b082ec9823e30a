//! Memory budgets: parsing `--mem-budget` sizes and the default, a share
//! of the memory this process may use.
//!
//! The default is `75%` of the available memory, less the KV cache the
//! caller plans to hold. Available memory is the smaller of the system's
//! `MemAvailable` and, when the process runs in a memory cgroup (v1 or
//! v2) with a limit, that limit less what the cgroup already uses (its
//! inactive page cache counted as free, the kernel reclaims it first).
//! The other quarter is left to activations, the tokenizer, the runtime
//! and the rest of the system.

use std::path::{Path, PathBuf};

/// The share of available memory the default budget takes.
pub const DEFAULT_SHARE: f64 = 0.75;

/// Parses a size: a number (decimals allowed) with an optional unit.
/// `KiB`/`MiB`/`GiB`/`TiB` and the short `K`/`M`/`G`/`T` are powers of
/// 1024; `KB`/`MB`/`GB`/`TB` powers of 1000; `B` or none are bytes.
/// Case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 6GiB, 512MiB or 1500000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = v * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// Formats bytes with a binary unit, e.g. `1.50 GiB`.
pub fn format_size(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// What the process may use, as read from the system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemAvailable` of /proc/meminfo.
    pub available: Option<u64>,
    /// The memory cgroup's limit, when it has one.
    pub cgroup_limit: Option<u64>,
    /// The cgroup's usage less its inactive page cache.
    pub cgroup_used: Option<u64>,
}

impl MemInfo {
    /// Reads /proc and the cgroup files (missing ones are `None`).
    pub fn read() -> MemInfo {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| meminfo_field(&s, "MemAvailable:"));
        let (cgroup_limit, cgroup_used) = cgroup_memory().unwrap_or((None, None));
        MemInfo {
            available,
            cgroup_limit,
            cgroup_used,
        }
    }

    /// Bytes this process could still take.
    pub fn usable(&self) -> Option<u64> {
        let cg = self
            .cgroup_limit
            .map(|l| l.saturating_sub(self.cgroup_used.unwrap_or(0)));
        match (self.available, cg) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }
}

/// The default budget: [`DEFAULT_SHARE`] of [`MemInfo::usable`] less
/// `kv_reserve` bytes. None when the memory cannot be read (then there is
/// no budget: the file is mapped as a whole).
pub fn default_budget(kv_reserve: u64) -> Option<u64> {
    budget_from(&MemInfo::read(), kv_reserve)
}

pub fn budget_from(m: &MemInfo, kv_reserve: u64) -> Option<u64> {
    m.usable()
        .map(|u| ((u as f64 * DEFAULT_SHARE) as u64).saturating_sub(kv_reserve))
}

fn meminfo_field(s: &str, key: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn read_u64(p: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok()
}

fn stat_field(dir: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// (limit, used) of this process's memory cgroup. v1: the smallest limit
/// from the group up to the root (hierarchical limits); "no limit" is a
/// huge number there, ignored above 2^60.
fn cgroup_memory() -> Option<(Option<u64>, Option<u64>)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrl.split(',').any(|c| c == "memory") {
            let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            let mut limit: Option<u64> = None;
            let mut d = dir.as_path();
            loop {
                if let Some(l) = read_u64(&d.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 60)
                {
                    limit = Some(limit.map_or(l, |m| m.min(l)));
                }
                match d.parent() {
                    Some(p) if p.starts_with("/sys/fs/cgroup/memory") => d = p,
                    _ => break,
                }
            }
            let used = read_u64(&dir.join("memory.usage_in_bytes"))
                .map(|u| u.saturating_sub(stat_field(&dir, "total_inactive_file").unwrap_or(0)));
            return Some((limit, used));
        }
    }
    // v2: the unified hierarchy.
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let dir = PathBuf::from(root).join(path.trim_start_matches('/'));
        if dir.join("memory.max").exists() {
            let limit = read_u64(&dir.join("memory.max"));
            let used = read_u64(&dir.join("memory.current"))
                .map(|u| u.saturating_sub(stat_field(&dir, "inactive_file").unwrap_or(0)));
            return Some((limit, used));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("6GiB"), Ok(6 << 30));
        assert_eq!(parse_size("6g"), Ok(6 << 30));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("6 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(100), "100 B");
    }

    #[test]
    fn default_takes_the_smaller_of_system_and_cgroup() {
        let g = 1u64 << 30;
        let m = MemInfo {
            available: Some(16 * g),
            cgroup_limit: Some(4 * g),
            cgroup_used: Some(g),
        };
        assert_eq!(m.usable(), Some(3 * g));
        assert_eq!(budget_from(&m, g / 4), Some(2 * g));
        let m = MemInfo {
            available: Some(2 * g),
            cgroup_limit: None,
            cgroup_used: None,
        };
        assert_eq!(budget_from(&m, 4 * g), Some(0));
        assert_eq!(budget_from(&MemInfo::default(), 0), None);
        // The real system answers something on Linux.
        #[cfg(target_os = "linux")]
        assert!(MemInfo::read().available.is_some());
    }
}
