//! Where the record of the last apply ([`Record`]) is kept: the dataplane's state map, as a
//! chunked, checksummed byte string. Written after every apply; a torn write (an apply
//! killed halfway) is detected by the checksum and reported, never misread.
use aya::maps::{HashMap, MapData, MapError};
use policyroute_common::{StateChunk, MAX_STATE_CHUNKS, STATE_CHUNK};

use crate::{kernel::maps::Maps, plan::record::Record};

/// The record of the last apply; `None` when none was ever written.
pub fn read_record(maps: &Maps) -> Result<Option<Record>, RecordError> {
    match read(&maps.state)? {
        None => Ok(None),
        Some(bytes) => Record::decode(&bytes).map(Some).ok_or(RecordError::Corrupt),
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
    #[error("the state record is {0} bytes; at most {1} fit")]
    TooLarge(usize, usize),
    #[error(
        "the state record is incomplete or corrupt (an apply was interrupted?); run apply again"
    )]
    Corrupt,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Replaces the stored bytes with `payload`.
fn write(map: &mut HashMap<MapData, u32, StateChunk>, payload: &[u8]) -> Result<(), RecordError> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&fnv1a(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    // One key stays free for the epoch.
    let max = (MAX_STATE_CHUNKS as usize - 1) * STATE_CHUNK;
    if bytes.len() > max {
        return Err(RecordError::TooLarge(bytes.len(), max));
    }
    let chunks = bytes.chunks(STATE_CHUNK);
    let count = chunks.len() as u32;
    for (i, piece) in chunks.enumerate() {
        let mut chunk = StateChunk {
            len: piece.len() as u32,
            data: [0; STATE_CHUNK],
        };
        chunk.data[..piece.len()].copy_from_slice(piece);
        map.insert(i as u32, chunk, 0)?;
    }
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|&k| k >= count && k != EPOCH_KEY)
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    Ok(())
}

/// The stored payload; `None` when nothing was ever written.
fn read(map: &HashMap<MapData, u32, StateChunk>) -> Result<Option<Vec<u8>>, RecordError> {
    let first = match map.get(&0, 0) {
        Ok(chunk) => chunk,
        Err(MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = piece(&first).to_vec();
    if bytes.len() < HEADER {
        return Err(RecordError::Corrupt);
    }
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let hash = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    // Only as many chunks as the header names: leftovers of a longer, older record are
    // deleted after the new one is complete and must not be read.
    let chunks = (HEADER + len).div_ceil(STATE_CHUNK) as u32;
    for i in 1..chunks.min(MAX_STATE_CHUNKS) {
        match map.get(&i, 0) {
            Ok(chunk) => bytes.extend_from_slice(piece(&chunk)),
            Err(MapError::KeyNotFound) => return Err(RecordError::Corrupt),
            Err(e) => return Err(e.into()),
        }
    }
    let payload = &bytes[HEADER..];
    if payload.len() != len || fnv1a(payload) != hash {
        return Err(RecordError::Corrupt);
    }
    Ok(Some(payload.to_vec()))
}

fn piece(chunk: &StateChunk) -> &[u8] {
    &chunk.data[..(chunk.len as usize).min(STATE_CHUNK)]
}
