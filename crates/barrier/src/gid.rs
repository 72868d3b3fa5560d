//! Global ids in dtm's format: a 22-character base57 "short UUID".
//!
//! dtm's `GenGid()` is `shortuuid.New()`: a random (v4) UUID written in base 57
//! with an alphabet that leaves out look-alikes (`0 1 I O l`). 57^22 > 2^128,
//! so 22 digits always suffice; shorter numbers are left-padded.

use barrier::Gid;

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

/// A fresh random gid.
pub fn new_gid() -> Gid {
    let text = encode_base57(uuid::Uuid::new_v4().as_u128());
    // 22 alphanumeric characters always satisfy Gid's rules.
    Gid::new(text).unwrap_or_else(|_| unreachable!("base57 text is a valid gid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_are_22_base57_characters_and_distinct() {
        let a = new_gid();
        let b = new_gid();
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
