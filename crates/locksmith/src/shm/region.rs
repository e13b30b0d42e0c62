//! Shared-memory regions to place primitives in, and a bump layout to place several.

use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use super::{Place, Placed, ALIGN};
use crate::os::mmap::{self, reserve};
use crate::{Error, Result};

/// Where named regions live.
const SHM_DIR: &str = "/dev/shm";

/// How to create a named [`Region`].
#[derive(Clone, Debug)]
pub struct RegionOptions {
    mode: u32,
    reserve: Option<usize>,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            mode: 0o600,
            reserve: None,
        }
    }
}

impl RegionOptions {
    /// The defaults: readable and writeable by the owner only (`0600`).
    pub fn new() -> RegionOptions {
        RegionOptions::default()
    }

    /// The file mode of a created region (applied exactly, whatever the umask).
    pub fn mode(mut self, mode: u32) -> RegionOptions {
        self.mode = mode & 0o777;
        self
    }

    /// How many leading bytes to reserve when the region is created (all of it unless
    /// said otherwise). Reserved memory is allocated in the filesystem up front, so a
    /// full `/dev/shm` is an error from `create` rather than a `SIGBUS` on the first
    /// write to a page; the rest stays sparse and must be reserved with
    /// [`Region::reserve`] before it is touched.
    pub fn reserve(mut self, bytes: usize) -> RegionOptions {
        self.reserve = Some(bytes);
        self
    }
}

/// What [`Region::try_create`] found.
enum Created {
    Yes(Region),
    Exists,
}

/// A mapping of shared memory that primitives are placed in.
///
/// - [`Region::create`] / [`Region::open`]: a named file in `/dev/shm` that unrelated
///   processes map by name (created `0600` unless [`RegionOptions::mode`] says
///   otherwise). The file stays until [`Region::unlink`].
/// - [`Region::anonymous`]: an anonymous `MAP_SHARED` mapping, shared with the
///   children this process `fork`s after creating it.
///
/// The memory starts zeroed. Hand out parts of it with [`Region::place`] (typed offsets
/// from a [`Layout`]) or [`Region::place_at`]; primitives placed there borrow the
/// region, so it cannot be unmapped while they are in use.
#[derive(Debug)]
pub struct Region {
    map: memmap2::MmapRaw,
    /// A named region's file, kept open to reserve its pages ([`Region::reserve`]).
    file: Option<File>,
    path: Option<PathBuf>,
}

fn shm_path(name: &str) -> Result<PathBuf> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0');
    if bad {
        return Err(Error::invalid(format!(
            "{name:?} is not a valid region name: 1 to 255 bytes, no '/' or NUL"
        )));
    }
    Ok(PathBuf::from(SHM_DIR).join(name))
}

impl Region {
    /// Creates the named region `/dev/shm/NAME` of `size` bytes (zeroed), mode `0600`;
    /// fails if it exists.
    pub fn create(name: &str, size: usize) -> Result<Region> {
        Region::create_with(name, size, &RegionOptions::new(), |_| Ok(()))
    }

    /// Creates a named region with options, runs `init` on it (to initialise the
    /// primitives placed in it), and only then makes it visible under its name, so
    /// that nobody can open it half-made. Fails, leaving nothing behind, if the name
    /// exists or `init` fails.
    ///
    /// ```
    /// use locksmith::shm::{Mutex, MutexOptions, Region, RegionOptions};
    /// let name = format!("locksmith-doc-{}", std::process::id());
    /// let r = Region::create_with(&name, 4096, &RegionOptions::new(), |r| {
    ///     Mutex::init(r.place_at(0, Mutex::SIZE)?, &MutexOptions::new()).map(drop)
    /// })?;
    /// let other = Region::open(&name)?;
    /// assert!(Mutex::attach(other.place_at(0, Mutex::SIZE)?).is_ok());
    /// Region::unlink(&name)?;
    /// # drop(r);
    /// # Ok::<(), locksmith::Error>(())
    /// ```
    pub fn create_with(
        name: &str,
        size: usize,
        options: &RegionOptions,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        match Region::try_create(name, size, options, init)? {
            Created::Yes(r) => Ok(r),
            Created::Exists => Err(Error::backend(format!(
                "cannot create {}: it exists",
                shm_path(name)?.display()
            ))),
        }
    }

    /// Creates the region under a private temporary name, sizes and initialises it,
    /// then hard-links it to its public name (which fails if that exists, atomically).
    fn try_create(
        name: &str,
        size: usize,
        options: &RegionOptions,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Created> {
        let path = shm_path(name)?;
        if size == 0 {
            return Err(Error::invalid("a region needs at least one byte"));
        }
        if path.exists() {
            return Ok(Created::Exists);
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = PathBuf::from(SHM_DIR).join(format!(
            ".locksmith-{}-{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let io = |what: &str, e: std::io::Error| {
            Error::backend(format!("cannot {what} {}: {e}", path.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(options.mode)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        let made = (|| {
            file.set_permissions(std::fs::Permissions::from_mode(options.mode))
                .map_err(|e| io("set the mode of", e))?;
            file.set_len(size as u64).map_err(|e| io("size", e))?;
            reserve(&file, 0, options.reserve.unwrap_or(size).min(size))
                .map_err(|e| io("reserve memory for", e))?;
            let region = Region::map_file(file, path.clone())?;
            init(&region)?;
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(Created::Yes(region)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Exists),
                Err(e) => Err(io("publish", e)),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        made
    }

    /// Opens the existing named region `/dev/shm/NAME`, mapping all of it.
    pub fn open(name: &str) -> Result<Region> {
        let path = shm_path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::backend(format!("cannot open {}: {e}", path.display())))?;
        Region::map_file(file, path)
    }

    /// Opens the named region, or creates it with `size` bytes and `init` (mode
    /// `0600`) if it does not exist; says whether this call created it. When several
    /// processes race, exactly one creates and initialises it and the others open the
    /// finished region.
    pub fn open_or_create(
        name: &str,
        size: usize,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<(Region, bool)> {
        match Region::try_create(name, size, &RegionOptions::new(), init)? {
            Created::Yes(r) => Ok((r, true)),
            Created::Exists => Ok((Region::open(name)?, false)),
        }
    }

    fn map_file(file: File, path: PathBuf) -> Result<Region> {
        let len = file
            .metadata()
            .map_err(|e| Error::backend(format!("cannot stat {}: {e}", path.display())))?
            .len();
        if len == 0 {
            return Err(Error::invalid(format!(
                "{} is empty (still being created?)",
                path.display()
            )));
        }
        let map = mmap::map_file(&file, None)
            .map_err(|e| Error::backend(format!("cannot map {}: {e}", path.display())))?;
        Ok(Region {
            map,
            file: Some(file),
            path: Some(path),
        })
    }

    /// Removes the named region `/dev/shm/NAME`; mappings that exist stay valid.
    pub fn unlink(name: &str) -> Result<()> {
        let path = shm_path(name)?;
        std::fs::remove_file(&path)
            .map_err(|e| Error::backend(format!("cannot remove {}: {e}", path.display())))
    }

    /// An anonymous shared mapping of `size` bytes (an unnamed memory file, shared as
    /// `MAP_SHARED | MAP_ANONYMOUS` memory is) with the processes this one forks
    /// afterwards.
    pub fn anonymous(size: usize) -> Result<Region> {
        if size == 0 {
            return Err(Error::invalid("a region needs at least one byte"));
        }
        let map = mmap::map_anonymous(size).map_err(Error::backend)?;
        Ok(Region {
            map,
            file: None,
            path: None,
        })
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty region (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Allocates the memory behind `len` bytes at `offset` of a named region (a no-op
    /// where it is allocated already, and for an anonymous region). Touching a page of
    /// a named region that was never reserved allocates it on the spot, and if
    /// `/dev/shm` is full the kernel answers with `SIGBUS`: reserve first, and a full
    /// filesystem is this error instead (`no space left on device`).
    pub fn reserve(&self, offset: usize, len: usize) -> Result<()> {
        match &self.file {
            Some(file) => {
                let end = offset.checked_add(len).filter(|e| *e <= self.len());
                if end.is_none() {
                    return Err(Error::invalid(format!(
                        "cannot reserve {len} bytes at {offset}: the region has {} bytes",
                        self.len()
                    )));
                }
                reserve(file, offset, len).map_err(|e| {
                    let path = self.path.as_deref().unwrap_or(std::path::Path::new("?"));
                    Error::backend(format!("cannot reserve memory in {}: {e}", path.display()))
                })
            }
            None => Ok(()),
        }
    }

    /// The file behind a named region.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// All of the region as a [`Place`].
    pub fn whole(&self) -> Place<'_> {
        // SAFETY: the mapping is valid for `len` bytes for as long as `self` is
        // borrowed, and the region only hands its memory out as `Place`s.
        unsafe { Place::from_raw(self.base(), self.len()) }.unwrap_or_else(|_| unreachable_place())
    }

    /// `len` bytes at `offset`.
    pub fn place_at(&self, offset: usize, len: usize) -> Result<Place<'_>> {
        let whole = self.whole();
        if whole.is_empty() {
            return Err(Error::invalid("the region has no memory"));
        }
        whole.sub(offset, len)
    }

    /// The bytes of the primitive a [`Layout`] put at `offset`.
    pub fn place<T: Placed>(&self, offset: Offset<T>) -> Result<Place<'_>> {
        self.place_at(offset.offset, T::SIZE)
    }
}

#[cold]
fn unreachable_place() -> Place<'static> {
    // A mapping is never at address 0; if it were, hand out an empty place, which every
    // primitive refuses as too small.
    Place::from(&mut [][..])
}

/// An offset in a region where a [`Layout`] put a primitive of type `T`.
#[derive(Debug)]
pub struct Offset<T> {
    offset: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Offset<T> {}

impl<T> Offset<T> {
    /// The offset in bytes.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// Places several primitives one after the other (each aligned to [`ALIGN`]), to
/// size a region and find them in it.
///
/// Every process must build the same layout (same calls, same order) to find the
/// same primitives.
///
/// ```
/// use locksmith::shm::{Barrier, Event, Layout, Mutex};
/// let mut layout = Layout::new();
/// let m = layout.add::<Mutex>();
/// let e = layout.add::<Event>();
/// let b = layout.add::<Barrier>();
/// let counter = layout.add_bytes(8, 8);
/// assert_eq!((m.offset(), e.offset(), b.offset()), (0, 32, 56));
/// assert_eq!(counter, 184);
/// assert_eq!(layout.size(), 192);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Layout {
    size: usize,
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Layout {
        Layout::default()
    }

    /// Reserves room for a `T` and answers its offset.
    pub fn add<T: Placed>(&mut self) -> Offset<T> {
        Offset {
            offset: self.add_bytes(T::SIZE, T::ALIGN),
            _t: PhantomData,
        }
    }

    /// Reserves `len` bytes aligned to `align` (a power of two; at least 1) for
    /// something of the caller's, and answers their offset.
    pub fn add_bytes(&mut self, len: usize, align: usize) -> usize {
        // Saturating: an absurd layout gives an absurd size, which mapping then refuses,
        // rather than a panic.
        let align = align.max(1).checked_next_power_of_two().unwrap_or(ALIGN);
        let offset = self
            .size
            .checked_next_multiple_of(align)
            .unwrap_or(usize::MAX);
        self.size = offset.saturating_add(len);
        offset
    }

    /// The bytes needed so far, rounded up to [`ALIGN`].
    pub fn size(&self) -> usize {
        self.size
            .checked_next_multiple_of(ALIGN)
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Mutex, MutexOptions};

    #[test]
    fn named_region_is_0600_and_shared_between_mappings() {
        let name = format!("locksmith-test-region-{}", std::process::id());
        let _ = Region::unlink(&name);
        let a = Region::create(&name, 4096).unwrap();
        let mode = std::fs::metadata(a.path().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Region::create(&name, 4096).is_err());
        let (b, created) = Region::open_or_create(&name, 4096, |_| Ok(())).unwrap();
        assert!(!created);
        let m = Mutex::init(a.place_at(64, Mutex::SIZE).unwrap(), &MutexOptions::new()).unwrap();
        let m2 = Mutex::attach(b.place_at(64, Mutex::SIZE).unwrap()).unwrap();
        let _g = m.lock().unwrap();
        assert_eq!(m2.owner_tid(), m.owner_tid());
        Region::unlink(&name).unwrap();
        assert!(Region::open(&name).is_err());
        assert!(Region::create("a/b", 1).is_err());
        // A failing initialiser leaves nothing behind.
        assert!(
            Region::create_with(&name, 64, &RegionOptions::new(), |_| Err(Error::invalid(
                "no"
            )))
            .is_err()
        );
        assert!(Region::open(&name).is_err());
        let custom =
            Region::create_with(&name, 64, &RegionOptions::new().mode(0o640), |_| Ok(())).unwrap();
        let mode = std::fs::metadata(custom.path().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        Region::unlink(&name).unwrap();
        assert!(Region::create("", 1).is_err());
    }

    #[test]
    fn anonymous_region_places() {
        let r = Region::anonymous(100).unwrap();
        assert_eq!(r.len(), 100);
        assert!(r.place_at(96, 8).is_err());
        assert!(r.place_at(92, 8).is_ok());
    }
}
