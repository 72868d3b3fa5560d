//! Global ids in dtm's format: a 22-character base57 "short UUID".
//!
//! dtm's `GenGid()` is `shortuuid.New()`: a random (v4) UUID written in base 57
//! with an alphabet that leaves out look-alikes (`0 1 I O l`). 57^22 > 2^128,
//! so 22 digits always suffice; shorter numbers are left-padded.
//!
//! The coordinator hands these out (`NewGid`), and a client may make its own
//! ([`Gid::random`]): a gid only has to be unique, and a local one saves a
//! round trip per transaction.

use crate::Gid;

/// The alphabet of github.com/lithammer/shortuuid.
const ALPHABET: &[u8; 57] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Length of every generated gid.
pub const GID_LEN: usize = 22;

/// Encodes a 128-bit number as exactly 22 base57 digits, most significant first.
pub fn encode_base57(mut n: u128) -> String {
    let mut digits = [ALPHABET[0]; GID_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(n % 57) as usize];
        n /= 57;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

impl Gid {
    /// A fresh random gid, like dtm's `GenGid()`: 122 random bits, so two
    /// are never equal in practice.
    pub fn random() -> Gid {
        // 22 base57 digits always satisfy Gid's rules (non-empty, short, printable).
        Gid(encode_base57(uuid::Uuid::new_v4().as_u128()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_are_22_base57_characters_and_distinct() {
        let a = Gid::random();
        let b = Gid::random();
        assert_ne!(a, b);
        for g in [&a, &b] {
            assert_eq!(g.as_str().len(), GID_LEN);
            assert!(g.as_str().bytes().all(|c| ALPHABET.contains(&c)));
        }
        assert_eq!(encode_base57(0), "2".repeat(22));
        assert_eq!(encode_base57(u128::MAX).len(), 22);
        assert_eq!(&encode_base57(57)[20..], "32");
    }
}
