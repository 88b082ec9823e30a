//! A directory of KV cache files ([`crate::kv_file`]) within a byte budget:
//! the longest saved prefix of a prompt is restored instead of prefilled.
//!
//! Naming: `<group>-<key>.dskv`, where `group` hashes the model fingerprint,
//! the cache type and the first [`GROUP_TOKENS`] token ids, and `key` hashes
//! the fingerprint, the type and every token id the file holds. A lookup
//! reads the token ids of the files of the prompt's group (their headers
//! only), takes the one sharing the longest prefix with the prompt, loads
//! it (checks and all) and truncates it to that shared prefix — so prompts
//! that share a long system prompt and differ after it reuse its KV. Saving
//! skips a sequence some file already extends, and removes the files the
//! new one extends, so a group holds one file per branch.
//!
//! Space: after each save, files are removed least recently used first
//! (modification time, which a restore refreshes) until the directory's
//! files fit the budget. Writes are atomic (temporary file + rename); a file
//! that fails its checks on load is removed and the next candidate tried.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::kv_file::{self, Fingerprint, KvFileError, KvHeader};
use crate::{KvType, Model, SeqState};

/// Prompts shorter than this are neither saved nor looked up: the group
/// of a file is the hash of its first `GROUP_TOKENS` ids.
pub const GROUP_TOKENS: usize = 32;
const EXT: &str = "dskv";

/// A state restored from the store.
pub struct Restored {
    pub state: SeqState,
    /// Positions the state holds: the prompt's prefix it matched.
    pub tokens: usize,
    pub path: PathBuf,
}

/// What a lookup found: a state, and the files it refused on the way (each
/// removed, with the reason).
#[derive(Default)]
pub struct Lookup {
    pub restored: Option<Restored>,
    pub rejected: Vec<(PathBuf, KvFileError)>,
}

/// A directory of KV files for one model and cache type.
pub struct KvStore {
    dir: PathBuf,
    budget: u64,
    fp: Fingerprint,
    kv_type: KvType,
    min_tokens: usize,
}

impl KvStore {
    /// Opens (creating it) `dir` for `model`'s caches, within `budget`
    /// bytes of files.
    pub fn open(dir: &Path, budget: u64, model: &Model) -> Result<KvStore, KvFileError> {
        Self::with_fingerprint(dir, budget, kv_file::fingerprint(model), model.kv_type())
    }

    /// [`KvStore::open`] with a fingerprint computed already.
    pub fn with_fingerprint(
        dir: &Path,
        budget: u64,
        fp: Fingerprint,
        kv_type: KvType,
    ) -> Result<KvStore, KvFileError> {
        fs::create_dir_all(dir).map_err(|source| KvFileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(KvStore {
            dir: dir.to_path_buf(),
            budget,
            fp,
            kv_type,
            min_tokens: GROUP_TOKENS,
        })
    }

    /// Saves only sequences of at least `n` positions (never fewer than
    /// [`GROUP_TOKENS`]).
    pub fn with_min_tokens(mut self, n: usize) -> KvStore {
        self.min_tokens = n.max(GROUP_TOKENS);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fp
    }

    fn hash(&self, tokens: &[u32], n: usize) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.fp);
        h.update(&[self.kv_type.id()]);
        for t in tokens {
            h.update(&t.to_le_bytes());
        }
        kv_file::hex(h.finalize().as_bytes(), n)
    }

    fn group(&self, tokens: &[u32]) -> Option<String> {
        (tokens.len() >= GROUP_TOKENS).then(|| self.hash(&tokens[..GROUP_TOKENS], 8))
    }

    /// The file that holds exactly `tokens`.
    pub fn path_for(&self, tokens: &[u32]) -> Option<PathBuf> {
        let g = self.group(tokens)?;
        Some(
            self.dir
                .join(format!("{g}-{}.{EXT}", self.hash(tokens, 16))),
        )
    }

    /// The files of `group`, with their headers (unreadable ones go to
    /// `rejected` and are removed).
    fn members(
        &self,
        group: &str,
        rejected: &mut Vec<(PathBuf, KvFileError)>,
    ) -> Vec<(PathBuf, KvHeader)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return out;
        };
        let prefix = format!("{group}-");
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(&prefix) || !name.ends_with(EXT) {
                continue;
            }
            let path = e.path();
            match kv_file::read_header_file(&path) {
                Ok(h) => out.push((path, h)),
                Err(err) => {
                    let _ = fs::remove_file(&path);
                    rejected.push((path, err));
                }
            }
        }
        out
    }

    /// Finds the saved state sharing the longest prefix with `prompt`,
    /// restores it (holding at most `capacity` positions) and truncates it
    /// to that prefix. Files that fail their checks are removed and
    /// reported in [`Lookup::rejected`].
    pub fn lookup(&self, model: &Model, prompt: &[u32], capacity: usize) -> Lookup {
        let mut out = Lookup::default();
        let Some(group) = self.group(prompt) else {
            return out;
        };
        let mut cands: Vec<(usize, usize, PathBuf)> = self
            .members(&group, &mut out.rejected)
            .into_iter()
            .filter(|(_, h)| h.tokens.len() <= capacity)
            .map(|(p, h)| (common_prefix(&h.tokens, prompt), h.tokens.len(), p))
            .filter(|&(lcp, _, _)| lcp >= GROUP_TOKENS)
            .collect();
        // Longest shared prefix first; of those, the smallest file.
        cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (lcp, _, path) in cands {
            match kv_file::load_file(model, &self.fp, &path, capacity) {
                Ok((_, mut state)) => {
                    touch(&path);
                    state.truncate(lcp);
                    out.restored = Some(Restored {
                        state,
                        tokens: lcp,
                        path,
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!("KV file {} refused: {e}", path.display());
                    let _ = fs::remove_file(&path);
                    out.rejected.push((path, e));
                }
            }
        }
        out
    }

    /// Saves the first `tokens.len()` positions of `state` unless the
    /// sequence is too short, a saved file already extends it, or it alone
    /// exceeds the budget. Removes the files it extends, then evicts down
    /// to the budget. Returns the bytes written (None: not saved).
    pub fn save(&self, tokens: &[u32], state: &SeqState) -> Result<Option<u64>, KvFileError> {
        if tokens.len() < self.min_tokens {
            return Ok(None);
        }
        let Some(group) = self.group(tokens) else {
            return Ok(None);
        };
        let Some(path) = self.path_for(tokens) else {
            return Ok(None);
        };
        let mut superseded = Vec::new();
        for (p, h) in self.members(&group, &mut Vec::new()) {
            if h.tokens.len() >= tokens.len() && h.tokens[..tokens.len()] == *tokens {
                touch(&p);
                return Ok(None);
            }
            if h.tokens.len() < tokens.len() && tokens[..h.tokens.len()] == h.tokens[..] {
                superseded.push(p);
            }
        }
        let per_pos = state.bytes() as u64 / state.len().max(1) as u64;
        if per_pos.saturating_mul(tokens.len() as u64) > self.budget {
            return Ok(None);
        }
        let n = kv_file::save_file(&self.fp, tokens, state, &path)?;
        for p in superseded {
            let _ = fs::remove_file(p);
        }
        self.evict();
        Ok(Some(n))
    }

    /// Files held and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let files = self.files();
        (files.len(), files.iter().map(|f| f.1).sum())
    }

    /// `(path, bytes, modified)` of every KV file; removes temporary files
    /// a crashed writer left (older than ten minutes).
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return out;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with(".tmp-") {
                let old = now.duration_since(mtime).unwrap_or_default() > Duration::from_secs(600);
                if old {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            if name.ends_with(EXT) {
                out.push((e.path(), md.len(), mtime));
            }
        }
        out
    }

    /// Removes least recently used files until the rest fit the budget.
    /// Returns the files removed.
    pub fn evict(&self) -> usize {
        let mut files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.2);
        let mut removed = 0;
        for (p, len, _) in files {
            if total <= self.budget {
                break;
            }
            if fs::remove_file(&p).is_ok() {
                removed += 1;
            }
            total = total.saturating_sub(len);
        }
        removed
    }
}

/// Marks a file as just used (its modification time orders eviction).
fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
