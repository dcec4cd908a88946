//! Where the record of the last apply ([`Record`]) is kept: the dataplane's state map, as a
//! chunked, checksummed byte string. Written after every apply; a torn write (an apply
//! killed halfway) is detected by the checksum and reported, never misread.
use std::os::fd::AsFd;

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use policyroute_common::{StateChunk, MAX_STATE_CHUNKS, STATE_CHUNK};

use crate::{
    kernel::{bpf_syscalls as bpf, maps::Maps},
    plan::record::Record,
};

/// The record of the last apply; `None` when none was ever written.
pub fn read_record(maps: &Maps) -> Result<Option<Record>, RecordError> {
    match read(&maps.state)? {
        None => Ok(None),
        Some(bytes) => match Record::decode(&bytes) {
            Some(r) => Ok(Some(r)),
            None if Record::other_version(&bytes) => Err(RecordError::OtherVersion),
            None => Err(RecordError::Corrupt),
        },
    }
}

/// Replaces the record.
pub fn write_record(maps: &mut Maps, record: &Record) -> Result<(), RecordError> {
    write(&mut maps.state, &record.encode())
}

/// The state map's key of `Maps::epoch`, apart from the record's chunks.
pub const EPOCH_KEY: u32 = u32::MAX;

/// Header: payload length (u64 LE) and its FNV-1a hash (u64 LE).
const HEADER: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state map: {0}")]
    Map(#[from] MapError),
    #[error("state map batch operation: {0}")]
    Batch(std::io::Error),
    #[error("the state record is {0} bytes; at most {1} fit")]
    TooLarge(usize, usize),
    #[error(
        "the state record is incomplete or corrupt (an apply was interrupted?); run apply again"
    )]
    Corrupt,
    #[error("the state record was written by another policyroute version")]
    OtherVersion,
}

/// Detects a torn record (crc32c-class speed matters: a 100k-rule record is 4.5 MB).
fn checksum(bytes: &[u8]) -> u64 {
    u64::from(crc32fast::hash(bytes))
}

/// What records written before the crc32 carry (FNV-1a), still read so that counters
/// survive an upgrade.
fn legacy_checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Replaces the stored bytes with `payload`. Chunks go in and stale ones out a batch per
/// syscall (a 100k-rule record is over 1,000 chunks).
fn write(map: &mut HashMap<MapData, u32, StateChunk>, payload: &[u8]) -> Result<(), RecordError> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    // One key stays free for the epoch.
    let max = (MAX_STATE_CHUNKS as usize - 1) * STATE_CHUNK;
    if bytes.len() > max {
        return Err(RecordError::TooLarge(bytes.len(), max));
    }
    let chunks: Vec<StateChunk> = bytes
        .chunks(STATE_CHUNK)
        .map(|piece| {
            let mut chunk = StateChunk {
                len: piece.len() as u32,
                data: [0; STATE_CHUNK],
            };
            chunk.data[..piece.len()].copy_from_slice(piece);
            chunk
        })
        .collect();
    let count = chunks.len() as u32;
    let keys: Vec<u32> = (0..count).collect();
    let fd = map.map().fd().as_fd();
    bpf::map_update_batch(fd, &keys, &chunks).map_err(RecordError::Batch)?;
    // Keys only (one small syscall each): a dump would copy every 4 KiB chunk again.
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|&k| k >= count && k != EPOCH_KEY)
        .collect();
    bpf::map_delete_batch(fd, &stale).map_err(RecordError::Batch)?;
    Ok(())
}

/// Every stored chunk, by key, read a batch per syscall.
fn stored(map: &HashMap<MapData, u32, StateChunk>) -> Result<Vec<(u32, StateChunk)>, RecordError> {
    bpf::map_dump(map.map().fd().as_fd()).map_err(RecordError::Batch)
}

/// The stored payload; `None` when nothing was ever written.
fn read(map: &HashMap<MapData, u32, StateChunk>) -> Result<Option<Vec<u8>>, RecordError> {
    assemble(stored(map)?)
}

/// The payload the stored chunks hold, checked against the header.
fn assemble(mut chunks: Vec<(u32, StateChunk)>) -> Result<Option<Vec<u8>>, RecordError> {
    chunks.retain(|(k, _)| *k != EPOCH_KEY);
    chunks.sort_unstable_by_key(|(k, _)| *k);
    let Some((0, first)) = chunks.first() else {
        return Ok(None);
    };
    let first = piece(first);
    if first.len() < HEADER {
        return Err(RecordError::Corrupt);
    }
    let len = u64::from_le_bytes(first[..8].try_into().expect("8 bytes")) as usize;
    let hash = u64::from_le_bytes(first[8..16].try_into().expect("8 bytes"));
    // Only as many chunks as the header names: leftovers of a longer, older record are
    // deleted after the new one is complete and must not be read.
    let count = (HEADER + len).div_ceil(STATE_CHUNK);
    let whole = chunks.len() >= count
        && chunks[..count]
            .iter()
            .enumerate()
            .all(|(i, (k, _))| *k as usize == i);
    if !whole {
        return Err(RecordError::Corrupt);
    }
    let mut bytes = Vec::with_capacity(HEADER + len);
    for (_, chunk) in &chunks[..count] {
        bytes.extend_from_slice(piece(chunk));
    }
    let payload = &bytes[HEADER..];
    let intact = checksum(payload) == hash || legacy_checksum(payload) == hash;
    if payload.len() != len || !intact {
        return Err(RecordError::Corrupt);
    }
    Ok(Some(payload.to_vec()))
}

fn piece(chunk: &StateChunk) -> &[u8] {
    &chunk.data[..(chunk.len as usize).min(STATE_CHUNK)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `payload` as stored chunks under a header carrying `sum`.
    fn chunks(payload: &[u8], sum: u64) -> Vec<(u32, StateChunk)> {
        let mut bytes = (payload.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&sum.to_le_bytes());
        bytes.extend_from_slice(payload);
        let mut out: Vec<(u32, StateChunk)> = bytes
            .chunks(STATE_CHUNK)
            .enumerate()
            .map(|(i, piece)| {
                let mut c = StateChunk {
                    len: piece.len() as u32,
                    ..StateChunk::default()
                };
                c.data[..piece.len()].copy_from_slice(piece);
                (i as u32, c)
            })
            .collect();
        // The batch dump comes in hash order, with the epoch among the chunks.
        out.reverse();
        out.push((EPOCH_KEY, StateChunk::default()));
        out
    }

    #[test]
    fn a_record_is_read_back_whole() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let got = assemble(chunks(&payload, checksum(&payload))).unwrap();
        assert_eq!(got, Some(payload));
    }

    #[test]
    fn a_record_written_before_the_crc_still_reads() {
        let payload = b"an older record".to_vec();
        let got = assemble(chunks(&payload, legacy_checksum(&payload))).unwrap();
        assert_eq!(got, Some(payload));
    }

    #[test]
    fn a_torn_record_is_corrupt_not_misread() {
        let payload: Vec<u8> = vec![7; 9_000];
        let mut torn = chunks(&payload, checksum(&payload));
        torn.retain(|(k, _)| *k != 1);
        assert!(matches!(assemble(torn), Err(RecordError::Corrupt)));
        let wrong = chunks(&payload, 42);
        assert!(matches!(assemble(wrong), Err(RecordError::Corrupt)));
        assert_eq!(assemble(Vec::new()).unwrap(), None);
    }
}
