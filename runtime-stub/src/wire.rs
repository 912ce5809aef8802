//! The envelope every message travels in: who may read it, which session it belongs
//! to, and where it falls in its sender's sequence.
//!
//! A message is two ZeroMQ parts: a 38-byte header and the body.
//!
//! ```text
//! header  "SHCF" | version 1 | flags (bit 0: encrypted) | session (16) | boot (8, LE) | seq (8, LE)
//! body    the frame (safetensors bytes), or with a key its XChaCha20-Poly1305
//!         ciphertext followed by the 16-byte tag; the header is the associated data
//! ```
//!
//! The key is derived from the shared secret file with blake3's key derivation. The
//! nonce is `boot ‖ seq ‖ session[..8]`: `boot` is a random id each process draws when
//! it starts and `seq` counts every message it seals, so no two messages under one key
//! share a nonce. Receivers drop (and count) what fails authentication, what is not
//! encrypted when a key is shared, and — through [`ReplayGuard`] — any `(sender, boot,
//! session, seq)` seen before or older than the window, so a captured message sent
//! again changes nothing. Hidden states reveal the prompt; without `--insecure` no
//! tensor crosses the network in the clear.

use std::collections::{HashMap, VecDeque};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// Bytes of the header.
pub const HEADER_LEN: usize = 38;
const MAGIC: &[u8; 4] = b"SHCF";
const VERSION: u8 = 1;
const ENCRYPTED: u8 = 1;
const TAG_LEN: usize = 16;

/// A session id: random, one per `generate`.
pub type SessionId = [u8; 16];

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("the operating system gave no random bytes: {e}"))?;
    Ok(b)
}

/// A session id as text (for messages and logs).
pub fn session_text(s: &SessionId) -> String {
    s.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub session: SessionId,
    /// The sender process's random id (a restarted process has a new one).
    pub boot: u64,
    /// The sender's message counter.
    pub seq: u64,
}

/// Why a message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a shardc message: {0}")]
    Malformed(String),
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not encrypted, but the devices share a secret (or this side runs --insecure and the sender does not)")]
    Unencrypted,
    #[error("message is encrypted, but this side has no secret (it runs --insecure)")]
    Encrypted,
    #[error("message fails authentication: not sealed with the shared secret, or altered")]
    BadTag,
}

/// Sealing and opening messages: with a key (encrypted and authenticated) or, only
/// when the user says `--insecure`, in the clear.
pub struct Wire {
    cipher: Option<XChaCha20Poly1305>,
    boot: u64,
    seq: u64,
    max_body: usize,
}

impl Wire {
    /// `key`: derived from the shared secret (`None`: insecure); `max_body`: the largest
    /// body accepted.
    pub fn new(key: Option<&[u8; 32]>, max_body: usize) -> Result<Wire, String> {
        Ok(Wire {
            cipher: key.map(|k| XChaCha20Poly1305::new(k.into())),
            boot: u64::from_le_bytes(random()?),
            seq: 0,
            max_body,
        })
    }

    /// This process's boot id.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    fn nonce(e: &Envelope) -> XNonce {
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&e.boot.to_le_bytes());
        n[8..16].copy_from_slice(&e.seq.to_le_bytes());
        n[16..].copy_from_slice(&e.session[..8]);
        n.into()
    }

    /// Seal `body` for `session`: the two message parts.
    pub fn seal(&mut self, session: &SessionId, mut body: Vec<u8>) -> Result<[Vec<u8>; 2], String> {
        let e = Envelope { session: *session, boot: self.boot, seq: self.seq };
        self.seq += 1;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend(MAGIC);
        header.push(VERSION);
        header.push(if self.cipher.is_some() { ENCRYPTED } else { 0 });
        header.extend(e.session);
        header.extend(e.boot.to_le_bytes());
        header.extend(e.seq.to_le_bytes());
        if let Some(c) = &self.cipher {
            let tag = c
                .encrypt_in_place_detached(&Wire::nonce(&e), &header, &mut body)
                .map_err(|_| "cannot encrypt a message".to_string())?;
            body.extend_from_slice(&tag);
        }
        Ok([header, body])
    }

    /// Check and open a message's parts: its envelope and the frame bytes.
    pub fn open(&self, parts: &mut [Vec<u8>]) -> Result<(Envelope, Vec<u8>), WireError> {
        let [header, body] = parts else {
            return Err(WireError::Malformed(format!("{} message parts (expected 2)", parts.len())));
        };
        if header.len() != HEADER_LEN || &header[..4] != MAGIC {
            return Err(WireError::Malformed("bad header".into()));
        }
        if header[4] != VERSION {
            return Err(WireError::Malformed(format!("wire version {} (this runtime speaks {VERSION})", header[4])));
        }
        if body.len() > self.max_body.saturating_add(TAG_LEN) {
            return Err(WireError::TooLarge { size: body.len(), limit: self.max_body });
        }
        let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
        let mut session = [0u8; 16];
        session.copy_from_slice(&header[6..22]);
        let e = Envelope { session, boot: u64_at(22), seq: u64_at(30) };
        let encrypted = match header[5] {
            0 => false,
            ENCRYPTED => true,
            f => return Err(WireError::Malformed(format!("unknown flags {f:#x}"))),
        };
        let mut body = std::mem::take(body);
        match (&self.cipher, encrypted) {
            (Some(c), true) => {
                if body.len() < TAG_LEN {
                    return Err(WireError::BadTag);
                }
                let tag = Tag::clone_from_slice(&body[body.len() - TAG_LEN..]);
                body.truncate(body.len() - TAG_LEN);
                c.decrypt_in_place_detached(&Wire::nonce(&e), header, &mut body, &tag)
                    .map_err(|_| WireError::BadTag)?;
            }
            (Some(_), false) => return Err(WireError::Unencrypted),
            (None, true) => return Err(WireError::Encrypted),
            (None, false) => {}
        }
        if body.len() > self.max_body {
            return Err(WireError::TooLarge { size: body.len(), limit: self.max_body });
        }
        Ok((e, body))
    }
}

/// Messages a side dropped, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Malformed, oversized, unencrypted or failing authentication.
    pub refused: u64,
    /// Seen before, or older than the replay window.
    pub replayed: u64,
    /// Of a session that ended or was superseded.
    pub stale: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.refused + self.replayed + self.stale
    }
}

/// Sequence numbers within this many of the newest seen are accepted once each (ZeroMQ
/// delivers one sender's messages in order, so real traffic never falls behind it).
pub const WINDOW: u64 = 128;

/// Most `(sender, boot, session)` streams remembered; the oldest are forgotten first
/// (their sessions are over: a message of theirs is then stale by session).
pub const MAX_STREAMS: usize = 4096;

/// Accepts each `(sender, boot, session, seq)` once.
#[derive(Default)]
pub struct ReplayGuard {
    streams: HashMap<(String, u64, SessionId), (u64, u128)>,
    order: VecDeque<(String, u64, SessionId)>,
}

impl ReplayGuard {
    /// Whether the message is new (and remember it).
    pub fn accept(&mut self, sender: &str, e: &Envelope) -> bool {
        let key = (sender.to_string(), e.boot, e.session);
        if !self.streams.contains_key(&key) {
            if self.order.len() >= MAX_STREAMS {
                if let Some(old) = self.order.pop_front() {
                    self.streams.remove(&old);
                }
            }
            self.order.push_back(key.clone());
            self.streams.insert(key, (e.seq, 1));
            return true;
        }
        let Some((top, bits)) = self.streams.get_mut(&key) else { return false };
        if e.seq > *top {
            let shift = e.seq - *top;
            *bits = if shift >= 128 { 0 } else { *bits << shift };
            *bits |= 1;
            *top = e.seq;
            true
        } else {
            let back = *top - e.seq;
            if back >= WINDOW {
                return false;
            }
            let bit = 1u128 << back;
            let fresh = *bits & bit == 0;
            *bits |= bit;
            fresh
        }
    }

    /// Forget every stream of `session`.
    pub fn forget(&mut self, session: &SessionId) {
        self.streams.retain(|k, _| k.2 != *session);
        self.order.retain(|k| k.2 != *session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_what_is_altered_or_unencrypted() {
        let key = [7u8; 32];
        let mut a = Wire::new(Some(&key), 1 << 20).unwrap();
        let b = Wire::new(Some(&key), 1 << 20).unwrap();
        let s = [3u8; 16];
        let mut parts = a.seal(&s, b"hello".to_vec()).unwrap();
        assert!(!parts[1].windows(5).any(|w| w == b"hello"), "the body is encrypted");
        let (e, body) = b.open(&mut parts.clone()).unwrap();
        assert_eq!((body.as_slice(), e.session, e.seq, e.boot), (&b"hello"[..], s, 0, a.boot()));
        // Altered body, altered header (session, seq), wrong key.
        let mut bad = parts.clone();
        bad[1][0] ^= 1;
        assert_eq!(b.open(&mut bad), Err(WireError::BadTag));
        let mut bad = parts.clone();
        bad[0][10] ^= 1;
        assert_eq!(b.open(&mut bad), Err(WireError::BadTag));
        let other = Wire::new(Some(&[8u8; 32]), 1 << 20).unwrap();
        assert_eq!(other.open(&mut parts.clone()), Err(WireError::BadTag));
        // Clear text where a key is shared, and the other way round.
        let mut clear = Wire::new(None, 1 << 20).unwrap();
        let mut plain = clear.seal(&s, b"hello".to_vec()).unwrap();
        assert_eq!(b.open(&mut plain.clone()), Err(WireError::Unencrypted));
        assert_eq!(clear.open(&mut parts), Err(WireError::Encrypted));
        assert_eq!(clear.open(&mut plain).unwrap().1, b"hello");
        // Limits and shapes.
        let small = Wire::new(Some(&key), 4).unwrap();
        assert!(matches!(small.open(&mut a.seal(&s, b"hello".to_vec()).unwrap()), Err(WireError::TooLarge { .. })));
        assert!(matches!(b.open(&mut [vec![1, 2, 3], vec![]]), Err(WireError::Malformed(_))));
        assert!(matches!(b.open(&mut [vec![]]), Err(WireError::Malformed(_))));
    }

    #[test]
    fn accepts_each_message_once() {
        let mut g = ReplayGuard::default();
        let e = |seq| Envelope { session: [1; 16], boot: 9, seq };
        assert!(g.accept("a", &e(0)));
        assert!(!g.accept("a", &e(0)));
        assert!(g.accept("b", &e(0)), "streams are per sender");
        assert!(g.accept("a", &e(5)));
        assert!(g.accept("a", &e(3)), "late but inside the window");
        assert!(!g.accept("a", &e(3)));
        assert!(g.accept("a", &e(300)));
        assert!(!g.accept("a", &e(100)), "older than the window");
        assert!(g.accept("a", &Envelope { boot: 10, ..e(0) }), "a restarted sender is a new stream");
        g.forget(&[1; 16]);
        assert!(g.accept("a", &e(0)), "forgotten with its session");
    }
}
