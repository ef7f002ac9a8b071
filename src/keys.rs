//! Internal API keys: reading them from request headers and looking them up
//! by SHA-256 digest.

use std::collections::HashMap;
use std::fmt;

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// SHA-256 digest of an internal API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses 64 hexadecimal digits, as printed by `tollgate hash-key`.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = hex::decode(text).map_err(|_| {
            format!("invalid SHA-256 digest \"{text}\": expected 64 hexadecimal digits")
        })?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| {
            format!("invalid SHA-256 digest \"{text}\": expected 64 hexadecimal digits")
        })?;
        Ok(KeyDigest(digest))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest of a short key can be brute-forced, so it is not printed.
        f.write_str("KeyDigest(<redacted>)")
    }
}

/// Index of a user in the configuration's user list.
pub type UserId = usize;

/// Maps key digests to users.
#[derive(Debug, Default)]
pub struct KeyRing {
    users: HashMap<KeyDigest, UserId>,
}

impl KeyRing {
    pub fn new(digests: impl IntoIterator<Item = KeyDigest>) -> Self {
        KeyRing {
            users: digests
                .into_iter()
                .enumerate()
                .map(|(id, digest)| (digest, id))
                .collect(),
        }
    }

    /// Finds the user that owns `key`. The key is hashed and looked up, never
    /// compared with the stored keys byte by byte.
    pub fn lookup(&self, key: &str) -> Option<UserId> {
        self.users.get(&KeyDigest::of(key)).copied()
    }
}

/// Reads the internal key from `Authorization: Bearer KEY` (scheme matched
/// without regard to case) or `x-api-key: KEY`.
pub fn key_from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, key) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let key = key.trim();
        return (!key.is_empty()).then_some(key);
    }

    let key = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn lookup_finds_each_user() {
        let ring = KeyRing::new([KeyDigest::of("secret"), KeyDigest::of("changeme")]);
        assert_eq!(ring.lookup("secret"), Some(0));
        assert_eq!(ring.lookup("changeme"), Some(1));
        assert_eq!(ring.lookup("Secret"), None);
        assert_eq!(ring.lookup(""), None);
    }

    #[test]
    fn digest_hex_round_trip() {
        let digest = KeyDigest::of("secret");
        assert_eq!(
            digest.to_hex(),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert_eq!(KeyDigest::from_hex(&digest.to_hex()), Ok(digest));
        assert!(KeyDigest::from_hex("abc").is_err());
        assert!(KeyDigest::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER   k1 "] {
            let map = headers(&[("authorization", value)]);
            assert_eq!(key_from_headers(&map), Some("k1"), "{value}");
        }
    }

    #[test]
    fn other_schemes_and_empty_keys_are_rejected() {
        assert_eq!(
            key_from_headers(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            key_from_headers(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(key_from_headers(&headers(&[("x-api-key", " ")])), None);
        assert_eq!(key_from_headers(&headers(&[])), None);
    }

    #[test]
    fn x_api_key_is_accepted() {
        assert_eq!(
            key_from_headers(&headers(&[("x-api-key", "k2")])),
            Some("k2")
        );
    }

    #[test]
    fn debug_hides_digest() {
        assert!(!format!("{:?}", KeyDigest::of("secret")).contains("2bb8"));
    }
}
