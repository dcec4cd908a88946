//! Writes prefix trie images into the memory-mapped `PR_PREFIX_TRIE` array. Through
//! `mmap` a multi-megabyte image costs stores, where `BPF_MAP_UPDATE_ELEM` would cost a
//! syscall per word; aya 0.14 has no mapping of array maps, hence libc.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU32, Ordering},
};

/// A shared mapping of an array map as `u32` words (its elements are whole nodes, a
/// multiple of 8 bytes, so the kernel pads none and the words are consecutive).
pub struct Mapped {
    ptr: *mut libc::c_void,
    bytes: usize,
    words: usize,
}

impl Mapped {
    /// Maps the first `words` words of the array map `fd` (created with BPF_F_MMAPABLE).
    pub fn new(fd: BorrowedFd<'_>, words: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (words * 4).next_multiple_of(page);
        // SAFETY: a fresh shared mapping of the map's data (the kernel checks the length
        // against the map's size); the pointer is only used through `words` below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, bytes, words })
    }

    /// The words, as atomics: the programs read them while the controller writes.
    fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is `bytes >= words * 4` long, page-aligned and lives as long
        // as `self`; AtomicU32 has u32's layout.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU32, self.words) }
    }

    /// Makes the words from `at` hold `image`, storing only those that differ; returns
    /// how many it stored.
    pub fn write(&self, at: usize, image: &[u32]) -> usize {
        let words = &self.words()[at..at + image.len()];
        let mut stored = 0;
        for (slot, &want) in words.iter().zip(image) {
            if slot.load(Ordering::Relaxed) != want {
                slot.store(want, Ordering::Relaxed);
                stored += 1;
            }
        }
        // The tables that make the image reachable are written after this, through a
        // syscall, which orders these stores before them.
        std::sync::atomic::fence(Ordering::Release);
        stored
    }

    /// The word at `index` (tests and `explain` read the live image).
    pub fn get(&self, index: usize) -> Option<u32> {
        self.words().get(index).map(|w| w.load(Ordering::Relaxed))
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.ptr, self.bytes) };
    }
}
