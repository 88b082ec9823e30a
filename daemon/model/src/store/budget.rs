//! Memory budgets: parsing `--mem-budget` sizes and the default, a share
//! of the memory this process may use.
//!
//! The default is `75%` of the available memory, split between weights and
//! the KV cache ([`default_split`]): the KV reserve is what the caller's
//! context needs, but at most a third of that share, so a long default
//! context never starves the weights (KV grows with the positions used;
//! the server admits sequences only while their positions fit the
//! reserve). Available memory is the smaller of the system's
//! `MemAvailable` and, when the process runs in a memory cgroup (v1 or
//! v2) with a limit, that limit less what the cgroup already uses (its
//! inactive page cache counted as free, the kernel reclaims it first).
//! The other quarter is left to activations, the tokenizer, the runtime
//! and the rest of the system.

use std::path::Path;

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

/// The largest part of the default share the KV reserve may take.
pub const KV_PART_OF_SHARE: f64 = 1.0 / 3.0;

/// The default memory split for a caller that would like `kv_wanted`
/// bytes of KV cache: `(weights, kv)` with `weights + kv` =
/// [`DEFAULT_SHARE`] of [`MemInfo::usable`] and `kv` at most
/// [`KV_PART_OF_SHARE`] of it. None when the memory cannot be read (then
/// there is no budget: the file is mapped as a whole).
pub fn default_split(kv_wanted: u64) -> Option<(u64, u64)> {
    split_from(&MemInfo::read(), kv_wanted)
}

pub fn split_from(m: &MemInfo, kv_wanted: u64) -> Option<(u64, u64)> {
    let share = (m.usable()? as f64 * DEFAULT_SHARE) as u64;
    let kv = kv_wanted.min((share as f64 * KV_PART_OF_SHARE) as u64);
    Some((share - kv, kv))
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

/// (limit, used) of this process's memory cgroup, from `/proc/self/cgroup`
/// and the hierarchies mounted under `/sys/fs/cgroup`.
fn cgroup_memory() -> Option<(Option<u64>, Option<u64>)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_memory_at(&text, Path::new("/sys/fs/cgroup"))
}

/// The files one cgroup version keeps its memory figures in.
struct CgroupFiles {
    limit: &'static str,
    usage: &'static str,
    inactive: &'static str,
}

const V1: CgroupFiles = CgroupFiles {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    inactive: "total_inactive_file",
};

const V2: CgroupFiles = CgroupFiles {
    limit: "memory.max",
    usage: "memory.current",
    inactive: "inactive_file",
};

/// (limit, used) for the cgroup `path` under the mount `root`: the
/// smallest limit from the group up to the mount (limits are
/// hierarchical; v1's "no limit" is a huge number, ignored above 2^60,
/// v2's is `max`), and the usage of the deepest group that exists, less
/// its inactive page cache. Inside a container the path named in
/// `/proc/self/cgroup` is often the host's, and only the mount's root
/// (the container's own group) exists: its figures are the ones to use.
fn group_memory(root: &Path, path: &str, f: &CgroupFiles) -> Option<(Option<u64>, Option<u64>)> {
    let dir = root.join(path.trim_start_matches('/'));
    let mut limit: Option<u64> = None;
    let mut used: Option<u64> = None;
    let mut found = false;
    let mut d = dir.as_path();
    loop {
        if d.join(f.limit).exists() {
            found = true;
            if let Some(l) = read_u64(&d.join(f.limit)).filter(|&l| l < 1 << 60) {
                limit = Some(limit.map_or(l, |m| m.min(l)));
            }
            if used.is_none() {
                used = read_u64(&d.join(f.usage))
                    .map(|u| u.saturating_sub(stat_field(d, f.inactive).unwrap_or(0)));
            }
        }
        match d.parent() {
            Some(p) if p.starts_with(root) => d = p,
            _ => break,
        }
    }
    found.then_some((limit, used))
}

/// [`cgroup_memory`] over the text of `/proc/self/cgroup` and the cgroup
/// mount `root`: v1's memory controller (`root/memory`) when the process
/// is in one, else the v2 unified hierarchy (`root`, or
/// `root/unified` on hybrid systems).
fn cgroup_memory_at(text: &str, root: &Path) -> Option<(Option<u64>, Option<u64>)> {
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrl.split(',').any(|c| c == "memory") {
            if let Some(r) = group_memory(&root.join("memory"), path, &V1) {
                return Some(r);
            }
        }
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    [root.to_path_buf(), root.join("unified")]
        .iter()
        .find_map(|r| group_memory(r, path, &V2))
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
        // 75% of 3 GiB: a small KV wish is granted whole...
        let share = 3 * g * 3 / 4;
        assert_eq!(split_from(&m, g / 4), Some((share - g / 4, g / 4)));
        // ...a large one is held to a third of the share.
        let (w, kv) = split_from(&m, 100 * g).unwrap();
        assert_eq!((w + kv, kv), (share, (share as f64 / 3.0) as u64));
        let m = MemInfo {
            available: Some(2 * g),
            cgroup_limit: None,
            cgroup_used: None,
        };
        assert_eq!(split_from(&m, 0), Some((3 * g / 2, 0)));
        assert_eq!(split_from(&MemInfo::default(), 0), None);
        // The real system answers something on Linux.
        #[cfg(target_os = "linux")]
        assert!(MemInfo::read().available.is_some());
    }

    /// Writes `files` (path, contents) under a fresh temporary root.
    fn tree(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("dwarfstar-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (p, v) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        }
        root
    }

    #[test]
    fn cgroup_v2_memory_max_is_read_up_the_hierarchy() {
        let root = tree(
            "v2",
            &[
                ("memory.max", "max\n"),
                ("box/memory.max", "1073741824\n"),
                ("box/app/memory.max", "max\n"),
                ("box/app/memory.current", "300000\n"),
                ("box/app/memory.stat", "anon 1\ninactive_file 100000\n"),
            ],
        );
        let got = cgroup_memory_at("0::/box/app\n", &root);
        assert_eq!(got, Some((Some(1 << 30), Some(200_000))));
        // A container that sees only its own group at the mount's root,
        // named by the host's path in /proc/self/cgroup.
        let root2 = tree(
            "v2c",
            &[("memory.max", "536870912\n"), ("memory.current", "1000\n")],
        );
        let got = cgroup_memory_at("0::/system.slice/docker-abc.scope\n", &root2);
        assert_eq!(got, Some((Some(512 << 20), Some(1000))));
        // No memory files at all: no cgroup figures.
        let root3 = tree("none", &[("cgroup.procs", "")]);
        assert_eq!(cgroup_memory_at("0::/\n", &root3), None);
        for r in [root, root2, root3] {
            let _ = std::fs::remove_dir_all(r);
        }
    }

    #[test]
    fn cgroup_v1_limit_is_the_smallest_on_the_path() {
        let root = tree(
            "v1",
            &[
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory/a/memory.limit_in_bytes", "2147483648\n"),
                ("memory/a/b/memory.limit_in_bytes", "4294967296\n"),
                ("memory/a/b/memory.usage_in_bytes", "5000\n"),
                ("memory/a/b/memory.stat", "total_inactive_file 1000\n"),
            ],
        );
        let got = cgroup_memory_at("4:memory:/a/b\n0::/\n", &root);
        assert_eq!(got, Some((Some(2 << 30), Some(4000))));
        let _ = std::fs::remove_dir_all(root);
    }
}
