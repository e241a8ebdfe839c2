//! The log start offset checkpoint: `delete_records` and retention move the log start, and
//! it must survive a restart. 17 bytes: magic `CMQS`, version 1, offset u64 BE, CRC-32C of
//! the preceding 13 bytes. Replaced atomically (`Storage::write_atomically`).

#[cfg(feature = "runtime")]
use std::path::Path;

#[cfg(feature = "runtime")]
use crate::error::Result;
#[cfg(feature = "runtime")]
use crate::storage;
use crate::types::Offset;

pub const FILE_NAME: &str = "log-start-offset";
const MAGIC: &[u8; 4] = b"CMQS";
const VERSION: u8 = 1;
const BYTES: usize = 17;

pub fn encode(offset: Offset) -> [u8; BYTES] {
    let mut out = [0u8; BYTES];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..13].copy_from_slice(&offset.0.to_be_bytes());
    let crc = crc32c::crc32c(&out[..13]);
    out[13..].copy_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> std::result::Result<Offset, String> {
    if bytes.len() != BYTES || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err("not a version 1 log start checkpoint".into());
    }
    let crc = u32::from_be_bytes(bytes[13..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[..13]) {
        return Err("checksum mismatch".into());
    }
    Ok(Offset(u64::from_be_bytes(
        bytes[5..13].try_into().expect("8 bytes"),
    )))
}

#[cfg(feature = "runtime")]
pub async fn store(storage: &storage::Storage, dir: &Path, offset: Offset) -> Result<()> {
    storage
        .write_atomically(dir, FILE_NAME, encode(offset).to_vec())
        .await
}

/// The stored log start, `None` if there is none; a damaged file is reported and ignored
/// (the log start then falls back to the first segment, which exposes no lost data).
#[cfg(feature = "runtime")]
pub fn load(dir: &Path) -> Option<Offset> {
    let bytes = std::fs::read(dir.join(FILE_NAME)).ok()?;
    match decode(&bytes) {
        Ok(offset) => Some(offset),
        Err(reason) => {
            log::warn!(
                "ignoring damaged {} in {}: {reason}",
                FILE_NAME,
                dir.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let bytes = encode(Offset(123_456));
        assert_eq!(decode(&bytes), Ok(Offset(123_456)));
        let mut flipped = bytes;
        flipped[7] ^= 1;
        assert!(decode(&flipped).is_err());
        assert!(decode(&bytes[..10]).is_err());
    }
}
