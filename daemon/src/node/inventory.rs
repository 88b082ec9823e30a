//! The models a node holds, as it announces them in its capabilities:
//! every `*.gguf` file directly in its models folder, with its size,
//! architecture and BLAKE3 content hash.
//!
//! Hashing reads the whole file, so hashes are kept in the state folder
//! (`model-hashes.json`), keyed by file name, size and modification time;
//! a file that changed is hashed again. Partial files fetched for a share
//! (under `.shards/`) are not announced: they are not whole models.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use dwarfstar_mesh::ModelInfo;
use serde::{Deserialize, Serialize};

/// The cache file in the state folder.
pub const CACHE_FILE: &str = "model-hashes.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Cached {
    size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0: unknown).
    modified_ns: u128,
    blake3: String,
}

fn modified_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// `general.architecture` of a GGUF file; empty when unreadable.
fn arch_of(path: &Path) -> String {
    dwarfstar_gguf::GgufFile::open(path)
        .ok()
        .and_then(|f| {
            f.metadata()
                .get_str("general.architecture")
                .ok()
                .map(String::from)
        })
        .unwrap_or_default()
}

/// The models in `models_dir`, sorted by name, hashing those the cache in
/// `state_dir` does not know (and updating it). A folder that cannot be
/// read holds no models; a file that cannot be hashed is announced without
/// a hash.
pub fn scan(models_dir: &Path, state_dir: &Path) -> Vec<ModelInfo> {
    let cache_path = state_dir.join(CACHE_FILE);
    let mut cache: BTreeMap<String, Cached> = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(models_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!("models folder {}: {e}", models_dir.display());
            return out;
        }
    };
    let mut changed = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".gguf") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let key = Cached {
            size: meta.len(),
            modified_ns: modified_ns(&meta),
            blake3: String::new(),
        };
        let known = cache
            .get(&name)
            .filter(|c| c.size == key.size && c.modified_ns == key.modified_ns)
            .map(|c| c.blake3.clone());
        let blake3 = match known {
            Some(h) => h,
            None => {
                let t0 = std::time::Instant::now();
                match dwarfstar_mesh::shard::hash_file(&path) {
                    Ok(h) => {
                        tracing::info!(
                            "hashed {name} ({} bytes) in {:.2} s",
                            key.size,
                            t0.elapsed().as_secs_f64()
                        );
                        cache.insert(
                            name.clone(),
                            Cached {
                                blake3: h.clone(),
                                ..key.clone()
                            },
                        );
                        changed = true;
                        h
                    }
                    Err(e) => {
                        tracing::warn!("hashing {}: {e}", path.display());
                        String::new()
                    }
                }
            }
        };
        out.push(ModelInfo {
            arch: arch_of(&path),
            name,
            size: key.size,
            sha256: String::new(),
            blake3,
        });
    }
    if changed {
        let text = serde_json::to_vec_pretty(&cache).unwrap_or_default();
        if let Err(e) = std::fs::write(&cache_path, text) {
            tracing::warn!("keeping model hashes in {}: {e}", cache_path.display());
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_mesh::shard::hash_hex;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dwarfstar-inv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn whole_gguf_files_are_listed_with_their_hash_and_the_hash_is_cached() {
        let models = tmp("models");
        let state = tmp("state");
        std::fs::write(models.join("b.gguf"), b"not really a model").unwrap();
        std::fs::write(models.join("a.gguf"), b"").unwrap();
        std::fs::write(models.join("notes.txt"), b"x").unwrap();
        std::fs::write(models.join(".hidden.gguf"), b"x").unwrap();
        std::fs::create_dir_all(models.join(".shards")).unwrap();
        std::fs::write(models.join(".shards/c.gguf"), b"x").unwrap();
        let got = scan(&models, &state);
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a.gguf", "b.gguf"]);
        assert_eq!(got[1].size, 18);
        assert_eq!(got[1].blake3, hash_hex(b"not really a model"));
        assert_eq!(got[1].arch, "", "not a GGUF file: no architecture");

        // A known file is not hashed again: a planted cache entry stands…
        let cache = state.join(CACHE_FILE);
        let text = std::fs::read_to_string(&cache).unwrap();
        let planted = text.replace(&got[1].blake3, "feed");
        std::fs::write(&cache, planted).unwrap();
        assert_eq!(scan(&models, &state)[1].blake3, "feed");
        // …until the file changes.
        std::fs::write(models.join("b.gguf"), b"another model").unwrap();
        assert_eq!(scan(&models, &state)[1].blake3, hash_hex(b"another model"));
        // A missing folder holds nothing; a broken cache is rebuilt.
        assert!(scan(&models.join("none"), &state).is_empty());
        std::fs::write(&cache, b"{").unwrap();
        assert_eq!(scan(&models, &state).len(), 2);
        let _ = std::fs::remove_dir_all(&models);
        let _ = std::fs::remove_dir_all(&state);
    }

    #[test]
    fn a_real_model_announces_its_architecture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-deepseek-v3");
        let state = tmp("state-real");
        let got = scan(&dir, &state);
        assert!(!got.is_empty());
        assert!(
            got.iter()
                .all(|m| m.arch == "deepseek2" && m.blake3.len() == 64),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}
