//! Content hashes: corpus downloads are verified, the prepared-data cache is keyed, checkpoints
//! are checksummed and sweep trials are identified by the sha256 of their bytes.

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256_hex_of(&[bytes])
}

/// Lower-case hex sha256 of the concatenation of `parts`.
pub fn sha256_hex_of(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
