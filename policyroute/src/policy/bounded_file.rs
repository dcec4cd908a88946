//! Reading the files a policy comes from (the policy, its list files, rt_tables): regular
//! files only, up to a size, with no open or read that can block. A stream (stdin) is
//! read up to a size too. A FIFO without a writer,
//! `/dev/zero`, a directory or a file larger than the cap is refused at once, naming what
//! it is.
use std::{
    fs::{Metadata, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// A policy or a list: 10 million prefixes are about 200 MB of text.
pub const MAX_POLICY_FILE: u64 = 256 << 20;
/// An rt_tables file (a few hundred names at most in practice).
pub const MAX_RT_TABLES_FILE: u64 = 1 << 20;

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading returns at once even without a writer (it is
    // then refused below); it changes nothing for a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "not a regular file (a {})",
            kind(&meta)
        )));
    }
    if meta.len() > max {
        return Err(too_large(meta.len(), max));
    }
    // The cap holds also for a file that grows while it is read.
    read_capped(&file, max)
}

/// The bytes of `reader` (stdin, say), at most `max` of them: more is an error, not a
/// silent cut.
pub fn read_capped(reader: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64, max));
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> io::Result<String> {
    text(read(path, max)?)
}

/// Bytes read, as UTF-8 text.
pub fn text(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::other(format!(
        "{len} bytes, more than the {max} a file may have here"
    ))
}

fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::read_capped;

    #[test]
    fn a_stream_longer_than_the_cap_is_refused_not_cut() {
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap(), b"abc");
        let err = read_capped(&b"abcd"[..], 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "4 bytes, more than the 3 a file may have here"
        );
    }
}
