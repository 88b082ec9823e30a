//! TLS for the QUIC data plane: a self-signed certificate whose key IS the node's ed25519
//! identity key, and a rustls verifier (server and client side: mutual auth) that accepts a peer
//! only when its certificate key maps to a PeerId admitted through libp2p (pinning). Chains,
//! names and validity dates are ignored: possession of the identity key, proven by the TLS 1.3
//! handshake signature, is what counts.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::{ed25519, PublicKey};
use libp2p::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::PeerBook;
use crate::identity::Identity;

/// ALPN of the data plane.
pub(crate) const ALPN: &[u8] = b"dwarfstar-data/1";
/// Server name a client asks for (the verifier ignores names).
pub(crate) const SERVER_NAME: &str = "dwarfstar";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("quic crypto config: {0}")]
    Quic(String),
}

/// The node's certificate and key, made once at start.
#[derive(Clone, Debug)]
pub(crate) struct NodeCert {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl NodeCert {
    pub(crate) fn new(identity: &Identity) -> Result<NodeCert, TlsSetupError> {
        let key_pkcs8 = identity.pkcs8_der();
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_pkcs8.as_slice()),
            &rcgen::PKCS_ED25519,
        )?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.peer_id().to_string());
        let cert = params.self_signed(&kp)?;
        Ok(NodeCert {
            cert: cert.der().clone(),
            key_pkcs8,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// PeerId of the ed25519 key in a certificate.
pub(crate) fn peer_id_of_cert(cert: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    let bad = |why: &str| rustls::Error::General(format!("peer certificate: {why}"));
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| bad(&e.to_string()))?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    if spki.len() != ED25519_SPKI_PREFIX.len() + 32 || spki[..12] != ED25519_SPKI_PREFIX {
        return Err(bad("key is not ed25519"));
    }
    let pk = ed25519::PublicKey::try_from_bytes(&spki[12..]).map_err(|e| bad(&e.to_string()))?;
    Ok(PublicKey::from(pk).to_peer_id())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies a peer's certificate and handshake signature, for either side of the handshake.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    book: PeerBook,
    /// When dialing: the PeerId we mean to reach.
    expected: Option<PeerId>,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(book: PeerBook, expected: Option<PeerId>) -> PeerVerifier {
        PeerVerifier {
            book,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PeerId, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "peer sent a certificate chain".into(),
            ));
        }
        let peer = peer_id_of_cert(end_entity)?;
        if let Some(expected) = self.expected {
            if peer != expected {
                return Err(rustls::Error::General(format!(
                    "peer is {peer}, expected {expected}"
                )));
            }
        }
        if !self.book.is_admitted(&peer) {
            tracing::warn!(%peer, "QUIC handshake from a peer not admitted through libp2p");
            return Err(rustls::Error::General(format!(
                "peer {peer} is not admitted"
            )));
        }
        Ok(peer)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::General(
                "only ed25519 signatures are accepted".into(),
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Transport parameters for LAN tensor traffic (big windows, many streams, keep-alive).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(15)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

pub(crate) fn server_config(
    cert: &NodeCert,
    book: PeerBook,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerVerifier::new(book, None)))
        .with_single_cert(vec![cert.cert.clone()], cert.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

pub(crate) fn client_config(
    cert: &NodeCert,
    book: PeerBook,
    expected: PeerId,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(book, Some(expected))))
        .with_client_auth_cert(vec![cert.cert.clone()], cert.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_key_is_the_identity_key() {
        let id = Identity::generate();
        let cert = NodeCert::new(&id).unwrap();
        assert_eq!(peer_id_of_cert(&cert.cert).unwrap(), id.peer_id());
        assert!(peer_id_of_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
