//! The one-line join token: a mesh's join secret and the addresses another machine can dial to
//! reach it, in one string a user pastes into `dwarfstar join`.
//!
//! Format: `dsj1.<payload>.<check>`, where `payload` is the unpadded URL-safe base64 of a JSON
//! object `{"secret": <base64 of the secret's bytes>, "peers": [<multiaddr>...]}` and `check` is
//! the first 4 bytes (hex) of the payload's blake3 hash, so a token cut short in a copy-paste is
//! named as such instead of becoming a wrong secret. The token carries the secret itself: whoever
//! holds it can join, as with the secret file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::secret::{JoinSecret, SecretError};

/// What the token starts with (its version).
pub const PREFIX: &str = "dsj1";

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a DwarfStar join token (it should start with `{PREFIX}.`)")]
    Prefix,
    #[error("the join token is incomplete or altered (its check does not match: was it cut short in copying?)")]
    Check,
    #[error("the join token's payload is not valid: {0}")]
    Payload(String),
    #[error("the join token names no address to dial")]
    NoPeers,
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A parsed join token.
#[derive(Clone, Debug)]
pub struct JoinToken {
    pub secret: JoinSecret,
    /// libp2p addresses of the node that printed it.
    pub peers: Vec<Multiaddr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    secret: String,
    peers: Vec<String>,
}

fn check(payload: &str) -> String {
    blake3::hash(payload.as_bytes()).as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl JoinToken {
    /// A token for `secret` and the addresses a node listens on, keeping those another
    /// machine can dial: loopback addresses are left out when any other address exists, and
    /// unspecified ones (`0.0.0.0`) always.
    pub fn new(secret: JoinSecret, listen: &[Multiaddr]) -> JoinToken {
        let dialable: Vec<Multiaddr> = listen
            .iter()
            .filter(|a| !matches!(ip_kind(a), IpKind::Unspecified))
            .cloned()
            .collect();
        let remote: Vec<Multiaddr> = dialable
            .iter()
            .filter(|a| matches!(ip_kind(a), IpKind::Routable))
            .cloned()
            .collect();
        let peers = if remote.is_empty() { dialable } else { remote };
        JoinToken { secret, peers }
    }

    /// The token's text.
    pub fn encode(&self) -> String {
        let p = Payload {
            secret: URL_SAFE_NO_PAD.encode(self.secret.bytes()),
            peers: self.peers.iter().map(|a| a.to_string()).collect(),
        };
        let json = serde_json::to_string(&p).expect("a struct of strings serializes");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let check = check(&payload);
        format!("{PREFIX}.{payload}.{check}")
    }

    /// Parses a token's text (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(TokenError::Prefix)?;
        let (payload, sum) = rest.rsplit_once('.').ok_or(TokenError::Check)?;
        if check(payload) != sum {
            return Err(TokenError::Check);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|e| TokenError::Payload(e.to_string()))?;
        let p: Payload =
            serde_json::from_slice(&json).map_err(|e| TokenError::Payload(e.to_string()))?;
        let secret = URL_SAFE_NO_PAD
            .decode(&p.secret)
            .map_err(|e| TokenError::Payload(format!("secret: {e}")))?;
        let peers = p
            .peers
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>()
                    .map_err(|e| TokenError::Payload(format!("address {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if peers.is_empty() {
            return Err(TokenError::NoPeers);
        }
        Ok(JoinToken {
            secret: JoinSecret::new(secret)?,
            peers,
        })
    }
}

/// Whether another machine can dial `a`: neither loopback nor `0.0.0.0`.
pub fn is_routable(a: &Multiaddr) -> bool {
    matches!(ip_kind(a), IpKind::Routable)
}

enum IpKind {
    Unspecified,
    Loopback,
    Routable,
}

fn ip_kind(a: &Multiaddr) -> IpKind {
    for p in a.iter() {
        match p {
            Protocol::Ip4(ip) if ip.is_unspecified() => return IpKind::Unspecified,
            Protocol::Ip6(ip) if ip.is_unspecified() => return IpKind::Unspecified,
            Protocol::Ip4(ip) if ip.is_loopback() => return IpKind::Loopback,
            Protocol::Ip6(ip) if ip.is_loopback() => return IpKind::Loopback,
            _ => {}
        }
    }
    IpKind::Routable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &[&str]) -> Vec<Multiaddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_token_round_trips_with_the_dialable_addresses() {
        let secret = JoinSecret::new(b"\x00\xffbinary secret bytes".to_vec()).unwrap();
        let t = JoinToken::new(
            secret,
            &addrs(&[
                "/ip4/127.0.0.1/tcp/7000",
                "/ip4/0.0.0.0/tcp/7000",
                "/ip4/192.168.1.20/tcp/7000",
            ]),
        );
        assert_eq!(t.peers, addrs(&["/ip4/192.168.1.20/tcp/7000"]));
        let text = t.encode();
        assert!(text.starts_with("dsj1."));
        assert!(!text.contains(char::is_whitespace));
        let back = JoinToken::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back.peers, t.peers);
        assert_eq!(back.secret.fingerprint(), t.secret.fingerprint());
    }

    #[test]
    fn loopback_stays_when_it_is_all_there_is() {
        let secret = JoinSecret::new(b"0123456789abcdef".to_vec()).unwrap();
        let t = JoinToken::new(secret, &addrs(&["/ip4/127.0.0.1/tcp/7000"]));
        assert_eq!(t.peers, addrs(&["/ip4/127.0.0.1/tcp/7000"]));
    }

    #[test]
    fn damaged_tokens_are_named() {
        let secret = JoinSecret::new(b"0123456789abcdef".to_vec()).unwrap();
        let text = JoinToken::new(secret, &addrs(&["/ip4/10.0.0.1/tcp/7000"])).encode();
        assert!(matches!(JoinToken::parse("hello"), Err(TokenError::Prefix)));
        assert!(matches!(
            JoinToken::parse(&text[..text.len() - 5]),
            Err(TokenError::Check)
        ));
        let mut flipped = text.clone().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            JoinToken::parse(std::str::from_utf8(&flipped).unwrap()),
            Err(TokenError::Check)
        ));
        // A well-formed token without addresses, and one whose payload is not JSON.
        for payload in [r#"{"secret":"YWJj","peers":[]}"#, "not json"] {
            let p = URL_SAFE_NO_PAD.encode(payload);
            let t = format!("{PREFIX}.{p}.{}", check(&p));
            let e = JoinToken::parse(&t).unwrap_err();
            assert!(
                matches!(e, TokenError::NoPeers | TokenError::Payload(_)),
                "{e}"
            );
        }
    }
}
