//! The signed return ticket: a client's place in line that travels to any instance and across
//! restarts. A reject carries one (`Warmgate-Ticket`, and a cookie when configured); a request
//! that presents a valid one is ordered by the ticket's first arrival.
//!
//! Layout, then base64url without padding: version (1 byte), key id length and key id, first
//! arrival (unix ms, 8 bytes), expiry (unix ms, 8), feature key (8), client hash (8), then the
//! first 16 bytes of HMAC-SHA256 over all of it. The client hash is the classifier's, keyed by
//! a configured secret ([`ClientHasher::keyed`]) so every instance hashes a client alike.
//! Verifying is pure and total: any byte string gives a [`Verdict`], never a panic.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// The response header (and request header) that carries a ticket.
pub const HEADER: &str = "warmgate-ticket";
const VERSION: u8 = 1;
const TAG: usize = 16;
const MAX_KID: usize = 16;
/// The longest ticket text looked at; anything longer is not ours.
const MAX_TEXT: usize = 128;

/// The signing keys: the first signs, every one verifies.
pub struct Ring {
    keys: Vec<(String, hmac::Key)>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "Ring({ids:?}, secrets redacted)")
    }
}

/// What a presented ticket turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid for this client and feature: its first arrival, unix ms.
    Valid(u64),
    /// Not decodable, wrong length or version, bad signature.
    Invalid,
    Expired,
    /// Signed with a key id this ring does not hold.
    Foreign,
    /// Signed by us, but for another client or feature.
    Mismatch,
}

impl Verdict {
    /// Index into [`Verdict::LABELS`].
    pub fn index(self) -> usize {
        match self {
            Verdict::Valid(_) => 0,
            Verdict::Invalid => 1,
            Verdict::Expired => 2,
            Verdict::Foreign => 3,
            Verdict::Mismatch => 4,
        }
    }

    /// Labels for metrics, by [`Verdict::index`].
    pub const LABELS: [&'static str; 5] =
        ["valid", "invalid", "expired", "foreign_key", "mismatch"];
}

/// Parses `id secret` / `id:secret` / `id=secret` entries (one per line or separated by
/// commas; `#` starts a comment). Secrets are at least 16 characters, ids 1 to 16 of
/// `[A-Za-z0-9_-]`. The error says which entry is wrong, never its secret.
pub fn parse_keys(text: &str, source: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let entries = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty());
    for (i, entry) in entries.enumerate() {
        let Some((id, secret)) = entry
            .split_once(|c: char| c == ':' || c == '=' || c.is_whitespace())
            .map(|(a, b)| (a.trim(), b.trim().trim_start_matches([':', '=']).trim()))
        else {
            return Err(format!(
                "{source}: entry {} is not \"id secret\" (a key id, then the secret)",
                i + 1
            ));
        };
        let id_ok = !id.is_empty()
            && id.len() <= MAX_KID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(format!(
                "{source}: entry {}: key id {id:?} must be 1 to {MAX_KID} letters, digits, '_' or '-'",
                i + 1
            ));
        }
        if secret.len() < 16 {
            return Err(format!(
                "{source}: the key {id:?} is shorter than 16 characters"
            ));
        }
        if out.iter().any(|(k, _)| k == id) {
            return Err(format!("{source}: the key id {id:?} is given twice"));
        }
        out.push((id.to_string(), secret.to_string()));
    }
    if out.is_empty() {
        return Err(format!(
            "{source}: no key (write \"id secret\", one per line)"
        ));
    }
    Ok(out)
}

impl Ring {
    /// A ring over `(id, secret)` pairs, the signing key first.
    pub fn new(keys: &[(String, String)]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(id, s)| (id.clone(), hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())))
                .collect(),
        }
    }

    /// The signing key's id.
    pub fn signing_id(&self) -> &str {
        self.keys.first().map_or("", |(k, _)| k.as_str())
    }

    /// A ticket for `client` on `feature` who first arrived at `first_ms`, valid until
    /// `expires_ms` (unix ms).
    pub fn issue(&self, first_ms: u64, expires_ms: u64, feature: u64, client: u64) -> String {
        let Some((id, key)) = self.keys.first() else {
            return String::new();
        };
        let mut buf = [0u8; 2 + MAX_KID + 32 + TAG];
        let n = body(
            &mut buf,
            id.as_bytes(),
            first_ms,
            expires_ms,
            feature,
            client,
        );
        let tag = hmac::sign(key, &buf[..n]);
        buf[n..n + TAG].copy_from_slice(&tag.as_ref()[..TAG]);
        URL_SAFE_NO_PAD.encode(&buf[..n + TAG])
    }

    /// What `text` is for `client` on `feature` at `now_ms` (unix ms).
    pub fn verify(&self, text: &[u8], now_ms: u64, feature: u64, client: u64) -> Verdict {
        if text.len() > MAX_TEXT {
            return Verdict::Invalid;
        }
        let mut raw = [0u8; MAX_TEXT];
        let Ok(n) = URL_SAFE_NO_PAD.decode_slice(text, &mut raw) else {
            return Verdict::Invalid;
        };
        let raw = &raw[..n];
        let (Some(&VERSION), Some(&kid_len)) = (raw.first(), raw.get(1)) else {
            return Verdict::Invalid;
        };
        let kid_len = usize::from(kid_len);
        if kid_len == 0 || kid_len > MAX_KID || raw.len() != 2 + kid_len + 32 + TAG {
            return Verdict::Invalid;
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG);
        let kid = &signed[2..2 + kid_len];
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k.as_bytes() == kid) else {
            return Verdict::Foreign;
        };
        let expected = hmac::sign(key, signed);
        if !constant_time_eq(&expected.as_ref()[..TAG], tag) {
            return Verdict::Invalid;
        }
        let field = |i: usize| {
            let at = 2 + kid_len + 8 * i;
            let mut b = [0u8; 8];
            b.copy_from_slice(&signed[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let (first, expires, f, c) = (field(0), field(1), field(2), field(3));
        if now_ms >= expires || first > now_ms {
            return Verdict::Expired;
        }
        if f != feature || c != client {
            return Verdict::Mismatch;
        }
        Verdict::Valid(first)
    }
}

/// Writes the signed part; returns its length.
fn body(
    buf: &mut [u8],
    kid: &[u8],
    first_ms: u64,
    expires_ms: u64,
    feature: u64,
    client: u64,
) -> usize {
    let kid = &kid[..kid.len().min(MAX_KID)];
    buf[0] = VERSION;
    buf[1] = kid.len() as u8;
    buf[2..2 + kid.len()].copy_from_slice(kid);
    let mut at = 2 + kid.len();
    for v in [first_ms, expires_ms, feature, client] {
        buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
        at += 8;
    }
    at
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds a ticket in a request: the header, else the cookie `name` (when cookies are on).
pub fn presented<'a, H: crate::fields::Fields + ?Sized>(
    headers: &'a H,
    cookie: Option<&str>,
) -> Option<&'a [u8]> {
    if let Some(v) = headers.first(HEADER) {
        return Some(v);
    }
    let name = cookie?.as_bytes();
    headers.find_map(http::header::COOKIE.as_str(), |v| {
        if std::str::from_utf8(v).is_err() {
            return None;
        }
        v.split(|b| *b == b';').find_map(|kv| {
            let kv = kv.trim_ascii();
            let eq = kv.iter().position(|b| *b == b'=')?;
            (&kv[..eq] == name).then(|| kv[eq + 1..].trim_ascii())
        })
    })
}

/// The client-key hash: SipHash under keys that are random for the process, or derived from
/// a configured secret so that every instance (and a restarted one) hashes a client alike.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientHasher {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for ClientHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHasher(keys redacted)")
    }
}

impl ClientHasher {
    /// Keys random for this process.
    pub fn random() -> Self {
        use std::hash::BuildHasher;
        let s = std::hash::RandomState::new();
        Self {
            k0: s.hash_one(0x5157_u64),
            k1: s.hash_one(0x9e37_u64),
        }
    }

    /// Keys derived from `secret`: the same on every instance that has it.
    pub fn keyed(secret: &str) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let tag = hmac::sign(&key, b"warmgate client hash v1");
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&tag.as_ref()[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Self {
            k0: word(0),
            k1: word(1),
        }
    }
}

impl std::hash::BuildHasher for ClientHasher {
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.k0, self.k1)
    }
}

pub use crate::clock::unix_ms;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::hash::BuildHasher;

    fn ring(ids: &[&str]) -> Ring {
        let keys: Vec<(String, String)> = ids
            .iter()
            .map(|id| (id.to_string(), format!("{id}-secret-0123456789")))
            .collect();
        Ring::new(&keys)
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_ticket_verifies_for_its_client_and_feature_only() {
        let r = ring(&["k1"]);
        let t = r.issue(NOW - 5_000, NOW + 60_000, 7, 42);
        assert_eq!(
            r.verify(t.as_bytes(), NOW, 7, 42),
            Verdict::Valid(NOW - 5_000)
        );
        assert_eq!(r.verify(t.as_bytes(), NOW, 8, 42), Verdict::Mismatch);
        assert_eq!(r.verify(t.as_bytes(), NOW, 7, 43), Verdict::Mismatch);
        assert_eq!(
            r.verify(t.as_bytes(), NOW + 60_000, 7, 42),
            Verdict::Expired
        );
    }

    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let old = ring(&["old"]);
        let t_old = old.issue(NOW, NOW + 1_000, 1, 1);
        let rotated = ring(&["new", "old"]);
        assert_eq!(rotated.signing_id(), "new");
        assert_eq!(
            rotated.verify(t_old.as_bytes(), NOW, 1, 1),
            Verdict::Valid(NOW)
        );
        let t_new = rotated.issue(NOW, NOW + 1_000, 1, 1);
        assert_eq!(old.verify(t_new.as_bytes(), NOW, 1, 1), Verdict::Foreign);
        let dropped = ring(&["new"]);
        assert_eq!(
            dropped.verify(t_old.as_bytes(), NOW, 1, 1),
            Verdict::Foreign
        );
    }

    #[test]
    fn forged_truncated_and_garbage_tickets_are_ignored_without_panic() {
        let r = ring(&["k1"]);
        let t = r.issue(NOW - 1, NOW + 1_000, 1, 1);
        // Same key id, another secret: the signature does not hold.
        let forged = Ring::new(&[("k1".into(), "another-secret-of-16+".into())]).issue(
            NOW - 100_000,
            NOW + 1_000,
            1,
            1,
        );
        assert_eq!(r.verify(forged.as_bytes(), NOW, 1, 1), Verdict::Invalid);
        for cut in 0..t.len() {
            let v = r.verify(&t.as_bytes()[..cut], NOW, 1, 1);
            assert_ne!(
                v,
                Verdict::Valid(NOW - 1),
                "a ticket cut at {cut} was taken"
            );
        }
        // One flipped character anywhere.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(
                !matches!(r.verify(&b, NOW, 1, 1), Verdict::Valid(_)),
                "flip at {i}"
            );
        }
        let mut x = 0x1234_5678_u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = crate::admission::retry::mix64(x);
                    x as u8
                })
                .collect();
            assert!(!matches!(r.verify(&junk, NOW, 1, 1), Verdict::Valid(_)));
        }
    }

    #[test]
    fn a_first_arrival_in_the_future_is_not_believed() {
        let r = ring(&["k1"]);
        let t = r.issue(NOW + 10_000, NOW + 60_000, 1, 1);
        assert_eq!(r.verify(t.as_bytes(), NOW, 1, 1), Verdict::Expired);
    }

    #[test]
    fn keys_parse_with_their_errors_named() {
        let k = parse_keys("# ring\nk2 abcdefghijklmnopq\nk1:0123456789abcdef\n", "f").unwrap();
        assert_eq!(k[0].0, "k2");
        assert_eq!(k.len(), 2);
        let k = parse_keys("a=0123456789abcdef,b=0123456789abcdefg", "env").unwrap();
        assert_eq!(k.len(), 2);
        assert!(parse_keys("k1 short", "f")
            .unwrap_err()
            .contains("shorter than 16"));
        assert!(parse_keys("", "f").unwrap_err().contains("no key"));
        let dup = parse_keys("a 0123456789abcdef\na 0123456789abcdef", "f").unwrap_err();
        assert!(dup.contains("twice"), "{dup}");
        let secret_hidden = parse_keys("bad/id 0123456789abcdef-secret", "f").unwrap_err();
        assert!(!secret_hidden.contains("secret"), "{secret_hidden}");
    }

    #[test]
    fn a_keyed_client_hash_is_the_same_everywhere_and_a_random_one_is_not() {
        let a = ClientHasher::keyed("fleet-secret-0123456789");
        let b = ClientHasher::keyed("fleet-secret-0123456789");
        assert_eq!(
            a.hash_one(b"client-1".as_slice()),
            b.hash_one(b"client-1".as_slice())
        );
        let other = ClientHasher::keyed("another-secret-0123456789");
        assert_ne!(
            a.hash_one(b"client-1".as_slice()),
            other.hash_one(b"client-1".as_slice())
        );
        let r1 = ClientHasher::random();
        let r2 = ClientHasher::random();
        assert_ne!(r1.hash_one(1u64), r2.hash_one(1u64));
    }

    #[test]
    fn a_ticket_is_found_in_the_header_or_the_cookie() {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", "a=1; wg_ticket=abc; b=2".parse().unwrap());
        assert_eq!(presented(&h, Some("wg_ticket")), Some(b"abc".as_slice()));
        assert_eq!(presented(&h, None), None);
        h.insert(HEADER, "xyz".parse().unwrap());
        assert_eq!(presented(&h, Some("wg_ticket")), Some(b"xyz".as_slice()));
    }
}
