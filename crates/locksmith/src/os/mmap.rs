//! Shared memory mappings, through memmap2. Every mapping the library makes is
//! `MAP_SHARED` and read-write: what one process writes there, every process that maps
//! the same memory reads. Unmapped when the [`MmapRaw`] drops.

use std::fs::File;
use std::io;

use memmap2::{MmapOptions, MmapRaw};

/// The first `len` bytes of `file` (all of it for `None`).
pub(crate) fn map_file(file: &File, len: Option<usize>) -> io::Result<MmapRaw> {
    let mut options = MmapOptions::new();
    if let Some(len) = len {
        options.len(len);
    }
    options.map_raw(file)
}

/// `len` zeroed bytes, shared with the children this process forks afterwards (as
/// `MAP_SHARED | MAP_ANONYMOUS` memory is). memmap2's anonymous mappings are private,
/// so the memory is a nameless `memfd` file, closed once mapped.
#[cfg(target_os = "linux")]
pub(crate) fn map_anonymous(len: usize) -> io::Result<MmapRaw> {
    use rustix::fs::{memfd_create, MemfdFlags};
    let file = File::from(memfd_create("locksmith", MemfdFlags::CLOEXEC)?);
    file.set_len(len as u64)?;
    map_file(&file, Some(len))
}

/// Allocates `len` bytes at `offset` of `file` (`posix_fallocate`): afterwards, writing
/// them through a mapping cannot fail for want of space (a page first touched in a
/// mapping of a full filesystem raises `SIGBUS` instead of an error).
pub(crate) fn reserve(file: &std::fs::File, offset: usize, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: posix_fallocate only allocates blocks of the open file behind the
    // descriptor, which `file` keeps open for the call; it reads no memory of ours.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) } {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn an_anonymous_mapping_is_zeroed_and_shared_with_a_forked_child() {
        let map = map_anonymous(4096).unwrap();
        assert_eq!(map.len(), 4096);
        // SAFETY: the mapping is page-aligned and 4096 bytes long, and lives as long as
        // `map`; the word is only accessed atomically.
        let word = unsafe { &*map.as_mut_ptr().cast::<AtomicU64>() };
        assert_eq!(word.load(Ordering::SeqCst), 0);
        // SAFETY: the child only stores to the shared word and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            word.store(7, Ordering::SeqCst);
            // SAFETY: leaves the forked child at once, running no destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a live int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(word.load(Ordering::SeqCst), 7, "the child's write is seen");
    }
}
