//! Node identity: a persistent ed25519 keypair in the state dir (`<state>/identity.key`, the
//! libp2p protobuf encoding, created with mode 0600 on first start and reloaded after). The same
//! key is the libp2p PeerId and the key of the QUIC data plane's self-signed certificate.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::{ed25519, Keypair};
use libp2p::PeerId;

/// File name of the identity key inside the state dir.
pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The node's keypair and the PeerId it gives.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `<state_dir>/identity.key`, or creates it (and the dir) when it does not exist.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                warn_if_readable_by_others(&path);
                let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                    IdentityError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                if keypair.clone().try_into_ed25519().is_err() {
                    return Err(IdentityError::Corrupt {
                        path,
                        reason: "not an ed25519 key".into(),
                    });
                }
                Ok(Identity::from_keypair(keypair))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir).map_err(io)?;
                let id = Identity::generate();
                let bytes =
                    id.keypair
                        .to_protobuf_encoding()
                        .map_err(|e| IdentityError::Corrupt {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                write_private(&path, &bytes).map_err(io)?;
                tracing::info!(peer_id = %id.peer_id, path = %path.display(), "created node identity");
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A fresh identity that is not stored anywhere.
    pub fn generate() -> Identity {
        Identity::from_keypair(Keypair::generate_ed25519())
    }

    fn from_keypair(keypair: Keypair) -> Identity {
        let peer_id = keypair.public().to_peer_id();
        Identity { keypair, peer_id }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The ed25519 secret key as PKCS#8 v1 DER (what rustls/rcgen take).
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let ed: ed25519::Keypair = match self.keypair.clone().try_into_ed25519() {
            Ok(k) => k,
            Err(_) => unreachable!("identities are ed25519 by construction"),
        };
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(ed.secret().as_ref());
        der
    }
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity key is readable by other users; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("dwarfstar-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&dir).unwrap();
        let b = Identity::load_or_create(&dir).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(a.pkcs8_der().len(), 48);
        std::fs::write(dir.join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(
            Identity::load_or_create(&dir),
            Err(IdentityError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
