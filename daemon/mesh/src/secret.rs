//! Admission: the join secret every node of a mesh shares. Keys for the libp2p private network
//! (pnet PSK) and for the QUIC channel binding are derived from it with blake3's key derivation
//! under distinct context strings; the secret itself never leaves the process.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the join secret is empty")]
    Empty,
    #[error("join secret file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

const PNET_CONTEXT: &str = "dwarfstar mesh v1 libp2p pnet pre-shared key";
const QUIC_CONTEXT: &str = "dwarfstar mesh v1 quic channel binding key";
const FINGERPRINT_CONTEXT: &str = "dwarfstar mesh v1 secret fingerprint";

/// The shared join secret (bytes as given; a file's trailing newline is trimmed).
#[derive(Clone)]
pub struct JoinSecret(Vec<u8>);

impl std::fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinSecret(fingerprint {})", self.fingerprint())
    }
}

impl JoinSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<JoinSecret, SecretError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        if bytes.len() < 16 {
            tracing::warn!(
                "the join secret is shorter than 16 bytes; anyone who guesses it can join"
            );
        }
        Ok(JoinSecret(bytes))
    }

    /// Reads the secret from a file, trimming trailing whitespace (newlines).
    pub fn from_file(path: &Path) -> Result<JoinSecret, SecretError> {
        let mut bytes = std::fs::read(path).map_err(|source| SecretError::Io {
            path: path.display().to_string(),
            source,
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        JoinSecret::new(bytes)
    }

    /// Reads the secret from an environment variable; `Ok(None)` when it is unset.
    pub fn from_env(var: &str) -> Result<Option<JoinSecret>, SecretError> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                JoinSecret::new(v.as_bytes().to_vec()).map(Some)
            }
        }
    }

    /// A fresh random secret (32 bytes from the OS's generator).
    pub fn generate() -> JoinSecret {
        use rand::RngCore;
        let mut b = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        JoinSecret(b)
    }

    /// The secret kept in `path`, or a fresh one written there (readable by its owner only)
    /// when the file does not exist: a node that starts a mesh keeps its secret across restarts.
    pub fn load_or_create(path: &Path) -> Result<JoinSecret, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return JoinSecret::from_file(path);
        }
        let s = JoinSecret::generate();
        let hex: String = s.0.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(hex.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        // What is read back is what other nodes get: the hex text.
        JoinSecret::new(hex.into_bytes())
    }

    /// The secret's bytes (for the join token).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The libp2p private-network pre-shared key.
    pub(crate) fn pnet_key(&self) -> [u8; 32] {
        blake3::derive_key(PNET_CONTEXT, &self.0)
    }

    /// The key of the QUIC channel-binding MAC.
    pub(crate) fn quic_key(&self) -> [u8; 32] {
        blake3::derive_key(QUIC_CONTEXT, &self.0)
    }

    /// A short public fingerprint (hex) to tell in logs whether two nodes share a secret.
    pub fn fingerprint(&self) -> String {
        let k = blake3::derive_key(FINGERPRINT_CONTEXT, &self.0);
        k[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_per_purpose_and_secret() {
        let a = JoinSecret::new(b"correct horse battery staple".to_vec()).unwrap();
        let b = JoinSecret::new(b"correct horse battery stapler".to_vec()).unwrap();
        assert_ne!(a.pnet_key(), a.quic_key());
        assert_ne!(a.pnet_key(), b.pnet_key());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(!format!("{a:?}").contains("horse"));
        assert!(matches!(
            JoinSecret::new(Vec::new()),
            Err(SecretError::Empty)
        ));
    }

    #[test]
    fn a_created_secret_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dwarfstar-secret-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("join-secret");
        let _ = std::fs::remove_file(&p);
        let a = JoinSecret::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = JoinSecret::load_or_create(&p).unwrap();
        assert_eq!(a.pnet_key(), b.pnet_key());
        assert_eq!(a.bytes().len(), 64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_secret_trims_newline() {
        let p = std::env::temp_dir().join(format!("dwarfstar-secret-{}", std::process::id()));
        std::fs::write(&p, b"s3cret-s3cret-s3cret\n").unwrap();
        let s = JoinSecret::from_file(&p).unwrap();
        assert_eq!(
            s.pnet_key(),
            JoinSecret::new(b"s3cret-s3cret-s3cret".to_vec())
                .unwrap()
                .pnet_key()
        );
        std::fs::remove_file(&p).unwrap();
    }
}
