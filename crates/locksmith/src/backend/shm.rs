//! The shared-memory backend: `shm:NAME`, a named region in `/dev/shm` holding a table
//! of named slots, so that unrelated processes of one host that open the same URL find
//! the same `Lock("deploy")`.
//!
//! Each step locks the name's slot (a placed [`crate::shm::Mutex`], with dead-owner
//! takeover), loads the name's [`Record`], applies the shared state machine
//! ([`model::apply`]) and publishes the new record; waiters sleep on the slot's change
//! sequence word with `FUTEX_WAIT`.
//!
//! # Region layout
//!
//! All words native-endian, no pointers (offsets from the start of the region).
//!
//! | offset | size | what |
//! | --- | --- | --- |
//! | 0 | 256 | [`RawHeader`]: magic, version, capacity, arena bounds, allocation mutex, free lists |
//! | 256 | 4 × 4096 | bells: u32 futex words that queued waiters sleep on, picked by a hash of (slot, ticket); a step that makes tickets grantable bumps and wakes just their bells (a shared bell only costs a spurious wakeup) |
//! | 16640 | 128 × 1024 | the process table ([`RawProc`]): who the processes that hold locks through the fast path are |
//! | 147712 | 128 × capacity | the slot table ([`RawSlot`]), open addressing with linear probing on a FNV-1a hash of the name |
//! | 147712 + 128 × capacity | `arena` bytes | blocks holding serialized records (JSON) and names longer than 40 bytes |
//!
//! # The fast path
//!
//! An uncontended plain Lock is taken and given back with one compare-and-swap of its
//! slot's `fast` word, never touching the record (see [`fast`]). The word names the
//! holder's entry in the process table, which holds everything a verdict on its
//! process needs (boot and machine ids, PID namespace, pid, start time): a process
//! writes its entry once, before its first fast hold, so a holder killed right after
//! its compare-and-swap is judged like any other. Entries are reused only once their
//! process is proven dead and no word names them.
//!
//! # Waking
//!
//! - A waiter in a name's FIFO queue (it has a ticket) sleeps on its ticket's bell.
//! - Other watchers (events, barriers, conditions' lock waiters without a place in the
//!   queue) sleep on the slot's `seq` word; a step whose change concerns everyone
//!   bumps it and wakes them all.
//! - The queue holds at most `queue` waiters (URL option, 16 by default), so a record
//!   stays small however many wait: a waiter that finds it full waits outside it, on
//!   `seq`, and a step that frees places wakes that many of them to join.
//! - Async waiters in the queue sleep on their bell through io_uring where it works
//!   ([`super::futex_async`]), so a ring wakes their task directly; other async
//!   waiters share a "ringer" thread per word, which sleeps on it for every task of
//!   this process and wakes them (a queue's worth per change on `seq`).
//! - Every sleep is bounded by the check interval (`check_ms`, 50 ms), after which the
//!   waiter retries: that retry is what notices a holder whose process died, and
//!   keeps a live queued waiter from being expired (after 5 s without a retry).
//!
//! Creating a region reserves the header, the bells and the slot table in `/dev/shm`
//! (`posix_fallocate`), since lookups may read any slot; the arena stays sparse and
//! is reserved a block at a time when the bump allocator first hands it out. A page
//! is thus never touched before it is allocated: a full `/dev/shm` is an error of the
//! step that needed room, never a `SIGBUS`. Opening an existing region does no
//! per-slot work whatever its capacity.
//!
//! # Crash safety
//!
//! A process may be killed at any instruction, including while it holds a slot mutex
//! or the allocation mutex; the placed mutex hands the lock to the next taker with
//! `previous_owner_died`. Every shared structure is therefore changed so that each
//! prefix of a change is consistent:
//!
//! - a record is never rewritten in place: the new one is written into a fresh block
//!   and published with one atomic store of the slot's `record` word; the fencing
//!   counter `next_token` is stored *before* the record that uses it, so a torn step
//!   may skip a token but never hands one out twice;
//! - the fast word is closed before the record is read, and a hold it carried is
//!   published in the record before the word lets go of it (see [`fast`]);
//! - a process entry is published by one store of its `used` word;
//! - a slot is claimed under the allocation mutex and published by one store of its
//!   `state` word after everything else in it is written;
//! - free-list pushes and pops and bump allocation each publish with one store.
//!
//! The worst a crash leaves behind is a block that nobody references (a leak of at most
//! one block per crash), never a half-written record.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod fast;

use super::model::{self, Ctx, Millis, Op, Record, Reply, State};
use super::options;
use super::{Backend, BoxFuture, FastHold, Key, Watch};
use crate::os::clock::now_millis;
use crate::os::futex;
use crate::os::hash::stable_hash;
use crate::os::liveness::{self, Verdict};
use crate::owner::{Owner, TASK_BIT};
use crate::shm::{AtomicBlock, Mutex, MutexOptions, Region, RegionOptions};
use crate::{Error, Result};

/// "LKST": an initialised table region.
const MAGIC: u32 = 0x4C4B_5354;
/// The layout version this code reads and writes (2: slots are reclaimed, and tokens
/// of a re-created name start from the header's `token_floor`; 3: the fast word, the
/// spare block and the process table).
const VERSION: u32 = 3;

const HEADER_SIZE: usize = 256;
/// Futex words that queued waiters sleep on, chosen by a hash of (slot, ticket), so a
/// step wakes just the tickets it names rather than every waiter of the name.
const BELLS: usize = 4096;
const BELLS_AT: usize = HEADER_SIZE;
/// Where the process table starts.
const PROCS_AT: usize = BELLS_AT + BELLS * 4;
const PROC_SIZE: usize = 128;
/// Where the slot table starts.
const TABLE_AT: usize = PROCS_AT + fast::PROCS * PROC_SIZE;
const SLOT_SIZE: usize = 128;
/// Names up to this many bytes are kept in the slot itself.
const INLINE_NAME: usize = 40;
/// Hostnames up to this many bytes are kept in a process entry (Linux allows 64);
/// a process with a longer one never takes the fast path.
const INLINE_HOST: usize = 64;

/// Block size classes: `MIN_BLOCK << class`, 64 bytes to 2 MiB.
const MIN_BLOCK: usize = 64;
const CLASSES: usize = 16;

const DEFAULT_CAPACITY: u32 = 65_536;
const MAX_CAPACITY: u32 = 1 << 24;
const DEFAULT_ARENA: u64 = 64 << 20;
const DEFAULT_CHECK: Duration = Duration::from_millis(50);
const DEFAULT_QUEUE: usize = 16;
/// How long a waiter that found the queue full sleeps between looks, at most; it is
/// woken sooner when a place in the queue frees up.
const OVERFLOW_POLL: Duration = Duration::from_millis(500);
/// Queued waiters that have not retried for this long are dropped from the queue (a
/// waiter that vanished without a trace must not block FIFO order for ever); live
/// waiters retry at least every [`Shared::poll`], far more often.
const WAITER_TTL: Millis = 5_000;

/// Whether a slot `state` word says the slot holds a name (odd: named; 0: never used;
/// even: reclaimed). Each claim and each reclaim adds one, so the word also tells apart
/// the successive names a slot has held: a process that cached a slot checks it.
fn is_named(state: u32) -> bool {
    state & 1 == 1
}

/// How many names a table of `capacity` slots holds at once: 7/8 of it (at least 1).
/// Past that, creating a name first reclaims idle ones, and if none are, it is
/// refused. So probe sequences stay short (a lookup of a name the table does not hold
/// reads a few slots, never the whole table), at the price of 1/8 of the slots.
fn usable(capacity: u32) -> u64 {
    (u64::from(capacity) * 7 / 8).max(1)
}

/// After a sweep that found nothing idle, the next waits this long (ms): a table full
/// of live names costs each new name an error, not a scan of the whole table.
const SWEEP_BACKOFF: Millis = 1_000;

/// The region header, 256 bytes.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | `magic` u32 | `0x4C4B5354` ("LKST") once initialised (written last); anything else: not a table region |
/// | 4 | `version` u32 | layout version, [`VERSION`] |
/// | 8 | `capacity` u32 | number of slots |
/// | 12 | — | reserved, 0 |
/// | 16 | `arena_start` u64 | offset of the first arena byte |
/// | 24 | `arena_end` u64 | offset one past the last arena byte (the region's length) |
/// | 32 | `alloc` 32 bytes | a placed [`Mutex`] guarding block allocation and slot creation |
/// | 64 | `bump` u64 | offset of the first never-allocated arena byte; only grows |
/// | 72 | `named` u64 | slots holding a name now |
/// | 80 | `free[16]` u64 | head of the free list of blocks of `64 << class` bytes; 0 empty. A free block's first 8 bytes hold the next free block's offset |
/// | 208 | `token_floor` u64 | the highest fencing counter of any reclaimed name: a name claims its slot with this counter, so its tokens stay above any it had before |
/// | 216 | `max_probe` u64 | the farthest any named slot lies from its hash's home slot: lookups stop after that many |
/// | 224 | `reclaimed` u64 | names reclaimed so far (statistics) |
/// | 232 | `sweep_after` u64 | ms since the epoch before which no sweep runs (set after one that found nothing idle) |
/// | 240 | — | reserved, 0 |
#[repr(C)]
#[derive(Debug)]
struct RawHeader {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    reserved: AtomicU32,
    arena_start: AtomicU64,
    arena_end: AtomicU64,
    alloc: [AtomicU64; 4],
    bump: AtomicU64,
    named: AtomicU64,
    free: [AtomicU64; CLASSES],
    token_floor: AtomicU64,
    max_probe: AtomicU64,
    reclaimed: AtomicU64,
    sweep_after: AtomicU64,
    reserved2: [AtomicU64; 2],
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawHeader {}

/// One named primitive, 128 bytes.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | `lock` 32 bytes | a placed, non-recursive [`Mutex`]: held for the length of one step |
/// | 32 | `state` u32 | `0` never used · odd: named (written last, `Release`, when the slot is claimed) · even: reclaimed (free again). Each claim and reclaim adds 1 |
/// | 36 | `seq` u32 (futex) | change sequence: bumped (wrapping) by every step that wakes someone; watchers `FUTEX_WAIT` on it |
/// | 40 | `watchers` u32 | watches that may be asleep on `seq`; a step makes the wake system call only when it is not 0. A killed watcher leaves it too high, which costs only needless wake calls |
/// | 44 | `name_len` u32 | the name's length in bytes |
/// | 48 | `hash` u64 | FNV-1a hash of the name (never 0) |
/// | 56 | `next_token` u64 | the fencing counter: the last token handed out; only grows while the name holds the slot, and starts from the header's `token_floor` when it is claimed |
/// | 64 | `record` u64 | `offset << 32 \| length` of the block holding the serialized record; `0` when idle (no state beyond `next_token`) |
/// | 72 | `fast` u64 | the fast path's word ([`fast`]): `0` while the record holds the truth; otherwise a free or held plain Lock |
/// | 80 | `spare` u64 | `offset << 32 \| size` of a free block the slot keeps for its next record, so that a step whose record keeps its size class takes no allocation mutex; `0`: none. Equal to `record`'s block after a step killed mid-swap: then not spare |
/// | 88 | `name` 40 bytes | the name, if it has at most 40 bytes; otherwise word 0 is `offset << 32 \| length` of an arena block holding it |
///
/// `record`, `spare` and `next_token` are written only by the holder of `lock` (and by a claimer
/// before it publishes `state`); `fast` by the holder of `lock`, and while it is open
/// by fast acquisitions and releases (compare-and-swap); `state`, `name_len`, `hash` and `name` only under the
/// header's `alloc` mutex: while claiming the slot, before `state` is published, or
/// when reclaiming an idle name, which also holds `lock`.
///
/// # Reclaiming
///
/// A name is removed when its `record` is 0 (no state, no tag, no kind): only its
/// counter is left; it is idle when its record holds its kind alone. When creating a
/// name finds the table crowded (7/8 of the slots named), a sweep under the `alloc`
/// mutex reclaims every removed slot whose `lock` it can take at once, or, if there
/// is none, every idle one, whose kind is then forgotten (a warning says so): it
/// raises the header's `token_floor` to the slot's counter, then makes `state` even.
/// A re-created name starts from that floor, so its tokens exceed every token it had.
/// A process that cached the slot finds `state` changed once it holds `lock`, and looks
/// the name up again; its watchers are woken to do the same.
#[repr(C)]
#[derive(Debug)]
struct RawSlot {
    lock: [AtomicU64; 4],
    state: AtomicU32,
    seq: AtomicU32,
    watchers: AtomicU32,
    name_len: AtomicU32,
    hash: AtomicU64,
    next_token: AtomicU64,
    record: AtomicU64,
    fast: AtomicU64,
    spare: AtomicU64,
    name: [AtomicU64; INLINE_NAME / 8],
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawSlot {}

/// One process that takes fast holds, 128 bytes: what [`crate::os::liveness`] needs
/// to judge it, and its hostname (part of an owner's identity).
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | `used` u64 | `0` free · `1` in use (written last, `Release`, under the header's `alloc` mutex) |
/// | 8 | `boot` u64 | hash of the boot id |
/// | 16 | `machine` u64 | hash of the machine id |
/// | 24 | `pidns` u64 | inode of the PID namespace |
/// | 32 | `start` u64 | start time, in clock ticks since boot |
/// | 40 | `pid` u32 | the process id |
/// | 44 | `host_len` u32 | the hostname's length |
/// | 48 | `host` 64 bytes | the hostname |
/// | 112 | — | reserved, 0 |
///
/// An entry is written only while free, under the `alloc` mutex, and freed only when
/// its process is proven dead and no slot's `fast` word names it.
#[repr(C)]
#[derive(Debug)]
struct RawProc {
    used: AtomicU64,
    boot: AtomicU64,
    machine: AtomicU64,
    pidns: AtomicU64,
    start: AtomicU64,
    pid: AtomicU32,
    host_len: AtomicU32,
    host: [AtomicU64; INLINE_HOST / 8],
    reserved: [AtomicU64; 2],
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawProc {}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<RawSlot>() == SLOT_SIZE);
const _: () = assert!(std::mem::size_of::<RawProc>() == PROC_SIZE);
const _: () = assert!(Mutex::SIZE == 32);

/// What `shm:NAME?…` asks for.
#[derive(Clone, Debug)]
pub(crate) struct ShmOptions {
    name: String,
    capacity: Option<u32>,
    arena: Option<u64>,
    mode: u32,
    check: Duration,
    queue: usize,
    uring: bool,
}

impl ShmOptions {
    /// Parses the part of the URL after `shm:`: `NAME` then optional
    /// `?capacity=N&arena=BYTES&mode=OCTAL&queue=N&check_ms=MS&uring=on|off`.
    pub(crate) fn parse(spec: &str) -> Result<ShmOptions> {
        let (name, query) = match spec.split_once('?') {
            Some((n, q)) => (n, q),
            None => (spec, ""),
        };
        if name.is_empty() {
            return Err(Error::invalid(
                "shm: needs a region name, as in shm:myapp (a file in /dev/shm)",
            ));
        }
        let mut opts = ShmOptions {
            name: name.to_owned(),
            capacity: None,
            arena: None,
            mode: 0o600,
            check: DEFAULT_CHECK,
            queue: DEFAULT_QUEUE,
            uring: true,
        };
        for opt in options::parse(query) {
            let (k, v) = (opt.key, opt.value()?);
            let v = v.as_str();
            let bad = |what: &str| Error::invalid(format!("shm:{spec}: option {k}={v:?}: {what}"));
            match k {
                "capacity" => {
                    let n: u32 = v.parse().map_err(|_| bad("not a whole number"))?;
                    if n == 0 || n > MAX_CAPACITY {
                        return Err(bad(&format!("must be 1 to {MAX_CAPACITY} names")));
                    }
                    opts.capacity = Some(n);
                }
                "arena" => {
                    let n = parse_bytes(v).ok_or_else(|| {
                        bad("not a size in bytes (a whole number, optionally with K, M or G)")
                    })?;
                    if n < (MIN_BLOCK << CLASSES) as u64 {
                        return Err(bad("must be at least 4M"));
                    }
                    opts.arena = Some(n);
                }
                "mode" => {
                    opts.mode = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| bad("not an octal file mode such as 600"))?;
                }
                "queue" => {
                    let n: usize = v.parse().map_err(|_| bad("not a whole number"))?;
                    if !(1..=4096).contains(&n) {
                        return Err(bad("must be 1 to 4096 waiters"));
                    }
                    opts.queue = n;
                }
                "uring" => {
                    opts.uring =
                        options::on_off(v).ok_or_else(|| bad("use uring=on or uring=off"))?;
                }
                "check_ms" => {
                    let ms: u64 = v.parse().map_err(|_| bad("not a whole number"))?;
                    if !(1..=60_000).contains(&ms) {
                        return Err(bad("must be 1 to 60000 milliseconds"));
                    }
                    opts.check = Duration::from_millis(ms);
                }
                _ => return Err(bad(
                    "unknown option; shm: takes capacity, arena, mode, queue, check_ms and uring",
                )),
            }
        }
        Ok(opts)
    }
}

fn parse_bytes(v: &str) -> Option<u64> {
    let (digits, unit) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// A name's hash in the slot table, never 0 (an empty slot's).
fn fnv1a(bytes: &[u8]) -> u64 {
    stable_hash(bytes).max(1)
}

fn class_of(len: usize) -> Option<usize> {
    let blocks = len.max(1).div_ceil(MIN_BLOCK).next_power_of_two();
    let class = blocks.trailing_zeros() as usize;
    (class < CLASSES).then_some(class)
}

/// The `shm:NAME` store.
#[derive(Debug, Clone)]
pub(crate) struct ShmBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    region: Region,
    url_name: String,
    capacity: u32,
    arena_start: u64,
    arena_end: u64,
    /// The longest a waiter sleeps before retrying: bounds how long a dead holder
    /// goes unnoticed.
    poll: Duration,
    /// At most this many waiters per name queue in FIFO order; later ones wait
    /// outside the queue and join it as places free up.
    queue_cap: usize,
    /// The tickets of this process's waiters that found the queue full.
    overflowed: std::sync::Mutex<HashSet<u64>>,
    /// Async waits: one thread per futex word that tasks of this process wait on,
    /// keyed by the word's offset in the region.
    ringers: std::sync::Mutex<HashMap<usize, Arc<Ringer>>>,
    /// Whether queued async waiters may sleep on their bell through io_uring
    /// (`?uring=off`: always through a ringer thread).
    uring: bool,
    /// This process's entry in the process table: `pid << 32 | entry`, or
    /// `pid << 32 | NO_PROC` if it has none; a forked child finds another pid here.
    me: AtomicU64,
    /// Held while this process registers, so that its threads share one entry.
    registering: std::sync::Mutex<()>,
}

/// The entry of a process that could not get one (the table is full of live
/// processes): it takes the general path.
const NO_PROC: u32 = u32::MAX;

/// The kind the fast word stands for.
const LOCK: model::Kind = model::Kind::Permits(model::PermitKind::Lock);

/// A record as published in its slot: the `record` word and the bytes it points to.
struct Stored {
    word: u64,
    bytes: Vec<u8>,
}

/// Whether `record` is a plain Lock's, or a new name's, with nothing in it: the fast
/// word may hold the truth.
fn is_idle_lock(record: &Record) -> bool {
    record.state.is_none()
        && record.tag.is_none()
        && (record.kind.is_none() || record.kind == Some(LOCK))
}

/// Records `token` as handed out in slot `s` (its counter only grows); the fast
/// word's [`fast::close`] calls it before it changes the word.
fn raise_counter(s: &RawSlot) -> impl Fn(u64) + '_ {
    move |token| {
        if token > s.next_token.load(Ordering::Relaxed) {
            s.next_token.store(token, Ordering::Release);
        }
    }
}

/// A thread that sleeps on one futex word for every async task of this process
/// waiting on it, and wakes them (through an in-process event) when the word changes
/// and at every poll interval. Thousands of waiting tasks thus cost one thread per
/// word, not one thread each.
#[derive(Debug)]
struct Ringer {
    event: event_listener::Event,
    /// Tasks waiting; changed under the `ringers` lock, so the thread can leave when
    /// it reaches zero without racing a newcomer.
    waiting: AtomicU64,
}

/// A step's answer, or its op back when the slot it was aimed at holds another name.
type Moved<T> = std::result::Result<T, Op>;

/// What a [`Key`] resolves to: its slot's index and `state` (`index << 32 | state`),
/// updated when the name turns out to have moved (it was reclaimed and re-created).
struct SlotAt(AtomicU64);

impl ShmBackend {
    /// Opens (creating if needed) the region a `shm:` URL names.
    pub(crate) fn open(spec: &str) -> Result<ShmBackend> {
        let opts = ShmOptions::parse(spec)?;
        let capacity = opts.capacity.unwrap_or(DEFAULT_CAPACITY);
        let arena = opts.arena.unwrap_or(DEFAULT_ARENA);
        let table = TABLE_AT as u64 + u64::from(capacity) * SLOT_SIZE as u64;
        let size = table + arena;
        if size > u64::from(u32::MAX) {
            return Err(Error::invalid(format!(
                "shm:{spec}: the region would take {size} bytes; offsets are 32-bit, so the slot table plus the arena must stay under 4 GiB"
            )));
        }
        let init = |r: &Region| -> Result<()> {
            let h: &RawHeader = r.place_at(0, HEADER_SIZE)?.view("the table header")?;
            h.version.store(VERSION, Ordering::Relaxed);
            h.capacity.store(capacity, Ordering::Relaxed);
            h.arena_start.store(table, Ordering::Relaxed);
            h.arena_end.store(size, Ordering::Relaxed);
            h.bump.store(table, Ordering::Relaxed);
            Mutex::init(
                r.place_at(32, Mutex::SIZE)?,
                &MutexOptions::new().recursive(false),
            )?;
            h.magic.store(MAGIC, Ordering::Release);
            Ok(())
        };
        // The header, bells and slot table are reserved (allocated in /dev/shm) at
        // creation, since lookups read any slot; the arena is reserved as blocks are
        // first handed out (`alloc_locked`). So a full /dev/shm is an error, never a
        // SIGBUS on a page touched for the first time.
        let options = RegionOptions::new().mode(opts.mode).reserve(table as usize);
        let region = match Region::create_with(&opts.name, size as usize, &options, init) {
            Ok(r) => r,
            // Most often: it exists (maybe created by a racing process just now). If
            // it cannot be opened either, say why not (permission denied, ...), unless
            // it is gone, when creating it failed for a reason of its own.
            Err(created) => match Region::open(&opts.name) {
                Ok(r) => r,
                Err(_) if !std::path::Path::new("/dev/shm").join(&opts.name).exists() => {
                    return Err(created)
                }
                Err(Error::InvalidArgument(_)) => {
                    return Err(Error::invalid(format!(
                        "/dev/shm/{} is not a locksmith shm: store (an empty file); choose another name",
                        opts.name
                    )))
                }
                Err(opened) => return Err(opened),
            },
        };
        let shared = Shared::attach(region, &opts)?;
        Ok(ShmBackend {
            shared: Arc::new(shared),
        })
    }

    /// The slot of `key` and the `state` it had when the name was found there.
    fn resolve(&self, key: &Key) -> Result<(u32, u32)> {
        let at = key.try_cached(|| {
            let (i, state) = self.shared.find_or_create(key.name())?;
            Ok(Arc::new(SlotAt(AtomicU64::new(join(
                u64::from(i),
                state as usize,
            )))))
        })?;
        let (i, state) = split(at.0.load(Ordering::Relaxed));
        Ok((i as u32, state as u32))
    }

    /// [`ShmBackend::resolve`] without touching the cache's reference count, for the
    /// fast path; `None` if the name cannot be found (the general path says why).
    #[inline]
    fn resolve_cached(&self, key: &Key) -> Option<(u32, u32)> {
        let word = match key.cached_ref::<SlotAt>() {
            Some(at) => at.0.load(Ordering::Relaxed),
            None => {
                let (i, state) = self.resolve(key).ok()?;
                return Some((i, state));
            }
        };
        let (i, state) = split(word);
        Some((i as u32, state as u32))
    }

    /// Looks `key` up again after its slot was found to hold another name.
    fn re_resolve(&self, key: &Key) -> Result<(u32, u32)> {
        let (i, state) = self.shared.find_or_create(key.name())?;
        if let Some(at) = key.cached_ref::<SlotAt>() {
            at.0.store(join(u64::from(i), state as usize), Ordering::Relaxed);
        }
        Ok((i, state))
    }
}

impl Shared {
    fn attach(region: Region, opts: &ShmOptions) -> Result<Shared> {
        let name = &opts.name;
        let not_table = || {
            Error::invalid(format!(
                "/dev/shm/{name} is not a locksmith shm: store (or was made by another version); choose another name"
            ))
        };
        let h: &RawHeader = region
            .place_at(0, HEADER_SIZE)
            .map_err(|_| not_table())?
            .view("the table header")?;
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(not_table());
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(Error::invalid(format!(
                "/dev/shm/{name} has layout version {version}; this library reads version {VERSION}"
            )));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        let arena_start = h.arena_start.load(Ordering::Relaxed);
        let arena_end = h.arena_end.load(Ordering::Relaxed);
        let table = TABLE_AT as u64 + u64::from(capacity) * SLOT_SIZE as u64;
        if capacity == 0
            || arena_start != table
            || arena_end < arena_start
            || arena_end > region.len() as u64
            || arena_end > u64::from(u32::MAX)
        {
            return Err(Error::invalid(format!(
                "/dev/shm/{name} has a corrupt header"
            )));
        }
        if let Some(wanted) = opts.capacity {
            if wanted != capacity {
                return Err(Error::invalid(format!(
                    "/dev/shm/{name} exists with capacity={capacity}, not {wanted}: capacity is fixed when a region is created (remove the file to make a new one)"
                )));
            }
        }
        Ok(Shared {
            region,
            url_name: name.clone(),
            capacity,
            arena_start,
            arena_end,
            poll: opts.check.min(Duration::from_millis(WAITER_TTL / 3)),
            queue_cap: opts.queue,
            overflowed: std::sync::Mutex::new(HashSet::new()),
            ringers: std::sync::Mutex::new(HashMap::new()),
            uring: opts.uring,
            me: AtomicU64::new(0),
            registering: std::sync::Mutex::new(()),
        })
    }

    fn header(&self) -> &RawHeader {
        // SAFETY: `attach` checked that the region holds at least the header (and the
        // table); the region is mapped for as long as `self` lives, aligned to a page,
        // and its memory is only ever accessed through atomics or under the protocols
        // described in the module docs.
        unsafe { &*self.region.whole().as_ptr().cast::<RawHeader>() }
    }

    fn slot(&self, i: u32) -> &RawSlot {
        debug_assert!(i < self.capacity);
        let i = i.min(self.capacity - 1) as usize;
        // SAFETY: `attach` checked that HEADER_SIZE + capacity * SLOT_SIZE bytes are
        // mapped, and `i < capacity`; slots are 128-byte aligned from a page-aligned
        // base, and made only of atomics.
        unsafe {
            &*self
                .region
                .whole()
                .as_ptr()
                .add(TABLE_AT + i * SLOT_SIZE)
                .cast::<RawSlot>()
        }
    }

    fn slot_mutex(&self, i: u32) -> Result<Mutex<'_>> {
        let at = TABLE_AT + i as usize * SLOT_SIZE;
        Mutex::attach(self.region.place_at(at, Mutex::SIZE)?)
    }

    fn proc(&self, i: usize) -> &RawProc {
        let i = i.min(fast::PROCS - 1);
        // SAFETY: `attach` checked that the table, which follows the process table, is
        // mapped; entries are 128-byte aligned from a page-aligned base, and made only
        // of atomics.
        unsafe {
            &*self
                .region
                .whole()
                .as_ptr()
                .add(PROCS_AT + i * PROC_SIZE)
                .cast::<RawProc>()
        }
    }

    /// This process's entry in the process table, registered on first use; `None`
    /// if it has none (the table is full of live processes): it then takes the
    /// general path.
    fn my_proc(&self) -> Option<usize> {
        let pid = u64::from(liveness::pid());
        let cached = self.me.load(Ordering::Acquire);
        if cached >> 32 == pid {
            return match cached as u32 {
                NO_PROC => None,
                entry => Some(entry as usize),
            };
        }
        let _one = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let cached = self.me.load(Ordering::Acquire);
        if cached >> 32 == pid {
            return (cached as u32 != NO_PROC).then_some(cached as u32 as usize);
        }
        let entry = self.register().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "shm: no process entry; plain locks take the general path");
            None
        });
        let code = entry.map_or(NO_PROC, |e| e as u32);
        // Release: a thread that finds the entry here also sees it written.
        self.me
            .store(pid << 32 | u64::from(code), Ordering::Release);
        entry
    }

    /// Writes this process into a free entry of the process table (freeing the
    /// entries of dead processes if none is).
    fn register(&self) -> Result<Option<usize>> {
        let me = liveness::this_process();
        if me.host.len() > INLINE_HOST {
            return Ok(None);
        }
        let m = self.alloc_mutex()?;
        let _guard = m.lock()?;
        let free = (0..fast::PROCS).find(|&i| self.proc(i).used.load(Ordering::Acquire) == 0);
        let Some(free) = free.or_else(|| self.reclaim_procs()) else {
            return Ok(None);
        };
        let p = self.proc(free);
        p.boot.store(me.boot, Ordering::Relaxed);
        p.machine.store(me.machine, Ordering::Relaxed);
        p.pidns.store(me.pidns, Ordering::Relaxed);
        p.start.store(me.start, Ordering::Relaxed);
        p.pid.store(me.pid, Ordering::Relaxed);
        p.host_len.store(me.host.len() as u32, Ordering::Relaxed);
        let mut host = [0u8; INLINE_HOST];
        host[..me.host.len()].copy_from_slice(me.host.as_bytes());
        for (w, chunk) in p.host.iter().zip(host.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        p.used.store(1, Ordering::Release);
        Ok(Some(free))
    }

    /// Frees the entries of processes proven dead that no fast word names (a dead
    /// process names no new ones); answers one of them. The caller holds the
    /// allocation mutex.
    fn reclaim_procs(&self) -> Option<usize> {
        let mut named = vec![false; fast::PROCS];
        for i in 0..self.capacity {
            if let Some(p) = fast::holder_proc(&self.slot(i).fast) {
                named[p] = true;
            }
        }
        let mut first = None;
        for (i, _) in named.iter().enumerate().filter(|(_, named)| !**named) {
            let p = self.proc(i);
            let verdict = liveness::judge(
                p.boot.load(Ordering::Relaxed),
                p.machine.load(Ordering::Relaxed),
                p.pidns.load(Ordering::Relaxed),
                p.pid.load(Ordering::Relaxed),
                p.start.load(Ordering::Relaxed),
            );
            if verdict == Verdict::Dead {
                p.used.store(0, Ordering::Release);
                first.get_or_insert(i);
            }
        }
        first
    }

    /// The owner of a fast hold by thread `thread` (0: a task) of the process in entry
    /// `i`.
    fn proc_owner(&self, i: usize, thread: u64) -> Owner {
        let p = self.proc(i);
        let len = (p.host_len.load(Ordering::Relaxed) as usize).min(INLINE_HOST);
        let mut host = Vec::with_capacity(INLINE_HOST);
        for w in &p.host {
            host.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        host.truncate(len);
        Owner {
            host: String::from_utf8_lossy(&host).as_ref().into(),
            boot: p.boot.load(Ordering::Relaxed),
            machine: p.machine.load(Ordering::Relaxed),
            pidns: p.pidns.load(Ordering::Relaxed),
            pid: p.pid.load(Ordering::Relaxed),
            start: p.start.load(Ordering::Relaxed),
            thread: if thread == 0 { TASK_BIT } else { thread },
        }
    }

    /// The bell that queued waiter `ticket` of slot `slot` sleeps on.
    fn bell(&self, slot: u32, ticket: u64) -> &AtomicU32 {
        let h = (ticket ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let i = (h >> 40) as usize % BELLS;
        // SAFETY: `attach` checked that the bells (before the table) are mapped; the
        // base is page-aligned, so each u32 is aligned; they are only used atomically.
        unsafe {
            &*self
                .region
                .whole()
                .as_ptr()
                .add(BELLS_AT + i * 4)
                .cast::<AtomicU32>()
        }
    }

    /// The u32 word at region offset `at` (a bell or a slot's `seq`).
    fn word_at(&self, at: usize) -> &AtomicU32 {
        let at = at.min(TABLE_AT + self.capacity as usize * SLOT_SIZE - 4) & !3;
        // SAFETY: clamped inside the bells and table, which `attach` checked are
        // mapped; 4-aligned; only used atomically.
        unsafe { &*self.region.whole().as_ptr().add(at).cast::<AtomicU32>() }
    }

    fn offset_of(&self, word: &AtomicU32) -> usize {
        word.as_ptr() as usize - self.region.whole().as_ptr() as usize
    }

    fn ring(&self, slot: u32, ticket: u64) {
        let bell = self.bell(slot, ticket);
        bell.fetch_add(1, Ordering::SeqCst);
        futex::wake(bell, u32::MAX, true);
    }

    fn ringers(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<Ringer>>> {
        self.ringers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overflowed(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.overflowed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alloc_mutex(&self) -> Result<Mutex<'_>> {
        Mutex::attach(self.region.place_at(32, Mutex::SIZE)?)
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::backend(format!(
            "the shm: store /dev/shm/{} is corrupt: {what}",
            self.url_name
        ))
    }

    /// Copies `len` bytes at arena offset `off` out of the region.
    fn read_block(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        if off < self.arena_start || off.saturating_add(len as u64) > self.arena_end {
            return Err(self.corrupt("a block lies outside the arena"));
        }
        let mut out = vec![0u8; len];
        // SAFETY: the range was checked to lie inside the mapped arena. The block is
        // owned by a slot whose mutex the caller holds (or is a published name, never
        // written again), so no other process writes it during the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.whole().as_ptr().add(off as usize),
                out.as_mut_ptr(),
                len,
            );
        }
        Ok(out)
    }

    fn write_block(&self, off: u64, bytes: &[u8]) -> Result<()> {
        if off < self.arena_start || off.saturating_add(bytes.len() as u64) > self.arena_end {
            return Err(self.corrupt("a block lies outside the arena"));
        }
        // SAFETY: the range lies inside the mapped arena; the block was just allocated,
        // or is a slot's spare whose mutex the caller holds: no record references it,
        // so nobody else reads or writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.whole().as_ptr().add(off as usize),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// The free-list link word at the start of block `off`.
    fn link(&self, off: u64) -> Result<&AtomicU64> {
        if off < self.arena_start || !off.is_multiple_of(8) || off + 8 > self.arena_end {
            return Err(self.corrupt("a free list points outside the arena"));
        }
        // SAFETY: in range and 8-aligned (checked above); accessed only atomically.
        Ok(unsafe {
            &*self
                .region
                .whole()
                .as_ptr()
                .add(off as usize)
                .cast::<AtomicU64>()
        })
    }

    /// The class of block a record of `len` bytes needs.
    fn record_class(len: usize) -> Result<usize> {
        class_of(len).ok_or_else(|| {
            Error::backend(format!(
                "a record of {len} bytes is larger than the shm: store's largest block ({} bytes): too many waiters or holders on one name",
                MIN_BLOCK << (CLASSES - 1)
            ))
        })
    }

    /// Allocates a block of at least `len` bytes; returns its offset.
    #[cfg(test)]
    fn alloc(&self, len: usize) -> Result<u64> {
        let class = Self::record_class(len)?;
        let m = self.alloc_mutex()?;
        // A previous owner that died here left every list consistent (each change is
        // one store), at worst leaking one block.
        let _g = m.lock()?;
        self.alloc_locked(class)
    }

    /// Allocates a block of class `class`; the caller holds the allocation mutex.
    fn alloc_locked(&self, class: usize) -> Result<u64> {
        let size = (MIN_BLOCK << class) as u64;
        let h = self.header();
        let head = h.free[class].load(Ordering::Acquire);
        if head != 0 {
            let next = self.link(head)?.load(Ordering::Relaxed);
            h.free[class].store(next, Ordering::Release);
            return Ok(head);
        }
        let bump = h.bump.load(Ordering::Relaxed);
        let end = bump.saturating_add(size);
        if end > self.arena_end {
            return Err(Error::backend(format!(
                "the shm: store /dev/shm/{} has no room left in its arena ({} bytes): remove the region and open it again with a larger ?arena= (e.g. shm:{}?arena=256M)",
                self.url_name,
                self.arena_end - self.arena_start,
                self.url_name
            )));
        }
        // Pages the arena never used before: allocate them in /dev/shm now, so that a
        // full /dev/shm fails this step (nothing changed yet) instead of a SIGBUS.
        self.region
            .reserve(bump as usize, size as usize)
            .map_err(|e| Error::backend(format!("the shm: store is out of memory: {e}")))?;
        h.bump.store(end, Ordering::Release);
        Ok(bump)
    }

    /// Returns the block described by a `record` word to its free list.
    fn free(&self, word: u64) -> Result<()> {
        let m = self.alloc_mutex()?;
        let _g = m.lock()?;
        self.free_locked(word)
    }

    /// [`Shared::free`] for a caller that holds the allocation mutex.
    fn free_locked(&self, word: u64) -> Result<()> {
        let (off, len) = split(word);
        let class = class_of(len).ok_or_else(|| self.corrupt("a record is too long"))?;
        let h = self.header();
        let link = self.link(off)?;
        link.store(h.free[class].load(Ordering::Relaxed), Ordering::Relaxed);
        h.free[class].store(off, Ordering::Release);
        Ok(())
    }

    fn name_matches(&self, s: &RawSlot, name: &str) -> Result<bool> {
        let len = s.name_len.load(Ordering::Relaxed) as usize;
        if len != name.len() {
            return Ok(false);
        }
        Ok(self.slot_name(s)? == name.as_bytes())
    }

    fn slot_name(&self, s: &RawSlot) -> Result<Vec<u8>> {
        let len = s.name_len.load(Ordering::Relaxed) as usize;
        if len <= INLINE_NAME {
            let mut out = Vec::with_capacity(INLINE_NAME);
            for w in &s.name {
                out.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            }
            out.truncate(len);
            Ok(out)
        } else {
            let (off, stored) = split(s.name[0].load(Ordering::Relaxed));
            if stored != len {
                return Err(self.corrupt("a name's length disagrees with its block"));
            }
            self.read_block(off, len)
        }
    }

    /// The slot of `name` and its `state`, claiming a free one if the name is new.
    fn find_or_create(&self, name: &str) -> Result<(u32, u32)> {
        let hash = fnv1a(name.as_bytes());
        if let Some(found) = self.probe(name, hash)? {
            return Ok(found);
        }
        // Claims happen only under the allocation mutex, so looking again under it is
        // authoritative: two processes creating one name get one slot.
        let m = self.alloc_mutex()?;
        let _guard = m.lock()?;
        if let Some(found) = self.probe(name, hash)? {
            return Ok(found);
        }
        let h = self.header();
        let full = |h: &RawHeader| h.named.load(Ordering::Relaxed) + 1 > usable(self.capacity);
        if full(h) {
            self.sweep(false)?;
        }
        let free = if full(h) { None } else { self.free_slot(hash) };
        let Some((free, distance)) = free else {
            return Err(Error::backend(format!(
                "the shm: store /dev/shm/{} is full: all {} names it holds at once (7/8 of \
                 capacity={}) are in use (held, waited for, set or tagged; idle names are \
                 reclaimed when needed). Remove the region and open it with a larger \
                 ?capacity= (e.g. shm:{}?capacity={})",
                self.url_name,
                usable(self.capacity),
                self.capacity,
                self.url_name,
                u64::from(self.capacity) * 2
            )));
        };
        let s = self.slot(free);
        let state = s.state.load(Ordering::Acquire);
        if state == 0 {
            // Never used. A claimer that died before publishing may have left bytes
            // behind: overwrite every field.
            for w in &s.lock {
                w.store(0, Ordering::Relaxed);
            }
            Mutex::init(
                self.region
                    .place_at(TABLE_AT + free as usize * SLOT_SIZE, Mutex::SIZE)?,
                &MutexOptions::new().recursive(false),
            )?;
            s.seq.store(0, Ordering::Relaxed);
            s.watchers.store(0, Ordering::Relaxed);
        }
        // A reclaimed slot keeps its mutex (a process that cached the old name may be
        // taking it, to find the name gone), `seq` and `watchers` (its watchers are
        // still counted there).
        let named = state.wrapping_add(1) | 1;
        let floor = h.token_floor.load(Ordering::Acquire);
        s.next_token.store(floor, Ordering::Relaxed);
        s.record.store(0, Ordering::Relaxed);
        s.spare.store(0, Ordering::Relaxed);
        // The new name's generation is in its fast word: a process that cached the old
        // name here never takes this one's lock through it.
        s.fast.store(fast::fresh(named, floor), Ordering::Relaxed);
        s.hash.store(hash, Ordering::Relaxed);
        s.name_len.store(name.len() as u32, Ordering::Relaxed);
        if name.len() <= INLINE_NAME {
            let mut buf = [0u8; INLINE_NAME];
            buf[..name.len()].copy_from_slice(name.as_bytes());
            for (w, chunk) in s.name.iter().zip(buf.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
            }
        } else {
            let class = class_of(name.len()).ok_or_else(|| Error::invalid("name too long"))?;
            let off = self.alloc_locked(class)?;
            self.write_block(off, name.as_bytes())?;
            s.name[0].store(join(off, name.len()), Ordering::Relaxed);
        }
        if distance > h.max_probe.load(Ordering::Relaxed) {
            h.max_probe.store(distance, Ordering::Release);
        }
        s.state.store(named, Ordering::Release);
        h.named.fetch_add(1, Ordering::Relaxed);
        Ok((free, named))
    }

    /// Looks for `name` along its probe sequence: its slot and `state` if present.
    /// The sequence ends at a slot never used, or past the header's `max_probe`: no
    /// name lies farther from its home slot, so a miss costs a few slots, not the
    /// table, however full it is.
    fn probe(&self, name: &str, hash: u64) -> Result<Option<(u32, u32)>> {
        let longest = self
            .header()
            .max_probe
            .load(Ordering::Acquire)
            .min(u64::from(self.capacity) - 1);
        let mut i = (hash % u64::from(self.capacity)) as u32;
        for _ in 0..=longest {
            let s = self.slot(i);
            let state = s.state.load(Ordering::Acquire);
            if state == 0 {
                return Ok(None);
            }
            if is_named(state) && s.hash.load(Ordering::Relaxed) == hash {
                // Without the allocation mutex the slot may be reclaimed and claimed
                // again while its name is read: a name that does not read back
                // consistently is no match (the caller then looks under the mutex).
                match self.name_matches(s, name) {
                    Ok(true) if s.state.load(Ordering::Acquire) == state => {
                        return Ok(Some((i, state)))
                    }
                    Ok(_) => {}
                    Err(_) if s.state.load(Ordering::Acquire) != state => {}
                    Err(e) => return Err(e),
                }
            }
            i = if i + 1 == self.capacity { 0 } else { i + 1 };
        }
        Ok(None)
    }

    /// The first slot free to claim (never used or reclaimed) along `hash`'s probe
    /// sequence, and its distance from the home slot. The caller holds the allocation
    /// mutex.
    fn free_slot(&self, hash: u64) -> Option<(u32, u64)> {
        if self.header().named.load(Ordering::Relaxed) >= u64::from(self.capacity) {
            return None;
        }
        let mut i = (hash % u64::from(self.capacity)) as u32;
        for distance in 0..u64::from(self.capacity) {
            if !is_named(self.slot(i).state.load(Ordering::Acquire)) {
                return Some((i, distance));
            }
            i = if i + 1 == self.capacity { 0 } else { i + 1 };
        }
        None
    }

    /// Reclaims every idle named slot whose mutex is free right now, and recomputes
    /// `max_probe` for the names that stay; answers how many it reclaimed. The caller
    /// holds the allocation mutex. A sweep that finds nothing to reclaim holds off the
    /// next for [`SWEEP_BACKOFF`].
    ///
    /// Asked for (`Space::reclaim_idle`), it forgets every idle name on purpose; by
    /// itself, on a crowded table, it takes removed names first and only if there are
    /// none idle names that still remember their kind, which they then forget.
    fn sweep(&self, asked: bool) -> Result<u64> {
        let h = self.header();
        let now = now_millis();
        if now < h.sweep_after.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let mut reclaimed = self.reclaim(asked)?;
        if reclaimed == 0 && !asked {
            reclaimed = self.reclaim(true)?;
            if reclaimed > 0 {
                tracing::warn!(
                    region = %self.url_name,
                    reclaimed,
                    "the shm: name table is crowded: idle names were reclaimed and their \
                     kinds forgotten (open the region with a larger ?capacity=)"
                );
            }
        }
        self.sweep_tail(reclaimed, now)
    }

    /// Whether the record in block `word` is an idle name's kind and counter alone.
    fn idle_with_kind(&self, word: u64) -> bool {
        let (off, len) = split(word);
        self.read_block(off, len)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .is_some_and(|r| r.state.is_none() && r.tag.is_none())
    }

    /// One pass of [`Shared::sweep`]: reclaims the idle slots whose mutex is free right
    /// now, with `with_kind` also those whose record keeps just a kind.
    fn reclaim(&self, with_kind: bool) -> Result<u64> {
        let h = self.header();
        let mut reclaimed = 0;
        for i in 0..self.capacity {
            let s = self.slot(i);
            let state = s.state.load(Ordering::Acquire);
            // Not a name somebody watches (a waiter on a clear event, whose wait must
            // not mistake the re-created name's counter for a set).
            if !is_named(state)
                || (s.record.load(Ordering::Acquire) != 0 && !with_kind)
                || s.watchers.load(Ordering::SeqCst) != 0
                || fast::holder_proc(&s.fast).is_some()
            {
                continue;
            }
            // A free fast word that handed out tokens stands for a Lock: not a removed
            // name, but an idle one that keeps its kind.
            let handed_out =
                fast::free_token(&s.fast).is_some_and(|t| t > s.next_token.load(Ordering::Relaxed));
            if handed_out && !with_kind {
                continue;
            }
            let m = self.slot_mutex(i)?;
            // Only a slot nobody is stepping on: never wait for one (a stepper holds
            // its slot's mutex and may want this allocation mutex next).
            let Some(guard) = m.try_lock()? else {
                continue;
            };
            let word = s.record.load(Ordering::Acquire);
            // The fast word closed first (unless a fast holder got in meanwhile): its
            // last token goes into the counter, and from there into the floor.
            if (word == 0 || (with_kind && self.idle_with_kind(word)))
                && s.state.load(Ordering::Acquire) == state
                && fast::close_if_free(&s.fast, raise_counter(s))
            {
                // The floor first: a crash before the state store leaves the name
                // where it was, with a floor that is merely higher.
                let counter = s.next_token.load(Ordering::Acquire);
                if counter > h.token_floor.load(Ordering::Relaxed) {
                    h.token_floor.store(counter, Ordering::Release);
                }
                let long = s.name_len.load(Ordering::Relaxed) as usize > INLINE_NAME;
                let name_block = s.name[0].load(Ordering::Relaxed);
                s.state.store(state.wrapping_add(1), Ordering::Release);
                h.named.fetch_sub(1, Ordering::Relaxed);
                if long {
                    self.free_locked(name_block)?;
                }
                let spare = s.spare.load(Ordering::Relaxed);
                if spare != 0 {
                    s.spare.store(0, Ordering::Release);
                    if split(spare).0 != split(word).0 {
                        self.free_locked(spare)?;
                    }
                }
                if word != 0 {
                    s.record.store(0, Ordering::Release);
                    self.free_locked(word)?;
                }
                reclaimed += 1;
            }
            drop(guard);
            // Whoever still watches the old name looks it up again.
            self.notify(s, u32::MAX);
        }
        Ok(reclaimed)
    }

    /// The end of [`Shared::sweep`]: `max_probe` recomputed, and the next sweep held
    /// off if this one found nothing.
    fn sweep_tail(&self, reclaimed: u64, now: Millis) -> Result<u64> {
        let h = self.header();
        // The farthest a remaining name lies from its home slot.
        let mut longest = 0u64;
        for i in 0..self.capacity {
            let s = self.slot(i);
            if is_named(s.state.load(Ordering::Acquire)) {
                let home = s.hash.load(Ordering::Relaxed) % u64::from(self.capacity);
                let distance =
                    (u64::from(i) + u64::from(self.capacity) - home) % u64::from(self.capacity);
                longest = longest.max(distance);
            }
        }
        h.max_probe.store(longest, Ordering::Release);
        h.reclaimed.fetch_add(reclaimed, Ordering::Relaxed);
        let after = if reclaimed == 0 {
            now + SWEEP_BACKOFF
        } else {
            0
        };
        h.sweep_after.store(after, Ordering::Relaxed);
        Ok(reclaimed)
    }

    /// Loads slot `s`'s record (of `name`); also answers where and as what it is
    /// stored. A record that does not decode is [`Error::Damaged`]: its name's problem
    /// only.
    fn load(&self, s: &RawSlot, name: &str) -> Result<(Record, Stored)> {
        let word = s.record.load(Ordering::Acquire);
        let next_token = s.next_token.load(Ordering::Acquire);
        if word == 0 {
            let record = Record {
                next_token,
                ..Record::default()
            };
            let stored = Stored {
                word: 0,
                bytes: Vec::new(),
            };
            return Ok((record, stored));
        }
        let (off, len) = split(word);
        let bytes = self.read_block(off, len)?;
        let mut record: Record = serde_json::from_slice(&bytes).map_err(|e| Error::Damaged {
            name: name.into(),
            reason: e.to_string(),
        })?;
        record.next_token = record.next_token.max(next_token);
        Ok((record, Stored { word, bytes }))
    }

    /// Publishes `record` in slot `s` in place of `old`, which then describes it. The
    /// caller holds the slot's mutex.
    fn store(&self, s: &RawSlot, record: &Record, old: &mut Stored) -> Result<()> {
        // The counter first: a crash between the two stores skips a token at worst.
        if s.next_token.load(Ordering::Relaxed) < record.next_token {
            s.next_token.store(record.next_token, Ordering::Release);
        }
        if record.state.is_none() && record.tag.is_none() && record.kind.is_none() {
            if old.word != 0 {
                s.record.store(0, Ordering::Release);
                let word = std::mem::take(&mut old.word);
                old.bytes.clear();
                self.free(word)?;
            }
            return Ok(());
        }
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::backend(format!("cannot encode a record: {e}")))?;
        if old.word != 0 && bytes == old.bytes {
            return Ok(());
        }
        let class = Self::record_class(bytes.len())?;
        let (old_off, old_len) = split(old.word);
        // The old block's whole size, as the slot's next spare.
        let old_block = match class_of(old_len) {
            Some(c) if old.word != 0 => join(old_off, MIN_BLOCK << c),
            _ => 0,
        };
        let spare = s.spare.load(Ordering::Relaxed);
        // A spare naming the record's own block is what a step killed between the
        // two stores below leaves: no spare.
        let spare = if spare != 0 && (old.word == 0 || split(spare).0 != old_off) {
            spare
        } else {
            0
        };
        if spare != 0 && class_of(split(spare).1) == Some(class) {
            // The same size class: the spare takes the record, the old block becomes
            // the spare, and the allocation mutex is not needed.
            let (off, _) = split(spare);
            self.write_block(off, &bytes)?;
            let new = join(off, bytes.len());
            s.record.store(new, Ordering::Release);
            s.spare.store(old_block, Ordering::Release);
            *old = Stored { word: new, bytes };
            return Ok(());
        }
        // One turn of the allocation mutex for the new block and the old spare. A
        // previous owner that died here left every list consistent (each change is
        // one store), at worst leaking one block.
        let m = self.alloc_mutex()?;
        let _guard = m.lock()?;
        let off = self.alloc_locked(class)?;
        self.write_block(off, &bytes)?;
        let new = join(off, bytes.len());
        s.record.store(new, Ordering::Release);
        if old_block != 0 {
            // The spare is replaced before it is freed: a crash between leaks it
            // rather than leaving the slot naming a freed block.
            s.spare.store(old_block, Ordering::Release);
            if spare != 0 {
                self.free_locked(spare)?;
            }
        }
        *old = Stored { word: new, bytes };
        Ok(())
    }

    /// Closes slot `s`'s fast word and moves what it held into `record`: a hold is
    /// published at once, before the word lets go of it (see [`fast`]). The caller
    /// holds the slot's mutex.
    fn fold(&self, s: &RawSlot, record: &mut Record, stored: &mut Stored) -> Result<()> {
        match fast::close(&s.fast, raise_counter(s)) {
            fast::Closed::Slow => {}
            fast::Closed::Free { last_token } => {
                // Tokens handed out through the word: a Lock used the name first.
                if last_token > record.next_token && record.kind.is_none() {
                    record.kind = Some(LOCK);
                }
                record.next_token = record.next_token.max(last_token);
            }
            fast::Closed::Held {
                token,
                proc,
                thread,
            } => {
                if record.kind.is_none() {
                    record.kind = Some(LOCK);
                }
                record.next_token = record.next_token.max(token);
                // The hold's start was not recorded; it is at least this old.
                let owner = self.proc_owner(proc, thread);
                record.state = Some(model::lock_held(token, owner, now_millis()));
                self.store(s, record, stored)?;
                fast::settle(&s.fast);
            }
        }
        Ok(())
    }

    /// Tells (up to `n` of) the watchers of slot `s` that it changed.
    fn notify(&self, s: &RawSlot, n: u32) {
        s.seq.fetch_add(1, Ordering::SeqCst);
        if s.watchers.load(Ordering::SeqCst) != 0 {
            futex::wake(&s.seq, n, true);
        }
    }

    /// One step on slot `i`, which held `name` in `state`; the op back, untouched, if
    /// the slot no longer does (the name was reclaimed).
    fn ctx_step(&self, i: u32, state: u32, name: &str, op: Op) -> Result<Moved<Reply>> {
        let s = self.slot(i);
        let m = self.slot_mutex(i)?;
        let guard = m.lock()?;
        if s.state.load(Ordering::Acquire) != state {
            return Ok(Err(op));
        }
        if guard.previous_owner_died() {
            // Records are published with one store, so the slot is consistent.
            tracing::warn!(name, "a process died inside a step on this name; recovered");
        }
        let (mut record, mut stored) = match self.load(s, name) {
            Err(Error::Damaged { .. }) if matches!(op, Op::ForceRelease) => {
                // Reset: the fencing counter lives in the slot, outside the record. A
                // fast hold goes too, as every holder does.
                tracing::warn!(name, "reset a damaged record");
                let _ = fast::close(&s.fast, raise_counter(s));
                let record = Record {
                    next_token: s.next_token.load(Ordering::Acquire),
                    ..Record::default()
                };
                let mut stored = Stored {
                    word: s.record.load(Ordering::Acquire),
                    bytes: Vec::new(),
                };
                self.store(s, &record, &mut stored)?;
                fast::settle(&s.fast);
                drop(guard);
                self.notify(s, u32::MAX);
                return Ok(Ok(Reply::Count(0)));
            }
            loaded => loaded?,
        };
        self.fold(s, &mut record, &mut stored)?;
        let (old_len, old_tickets) = queue_of(&record);
        let mut op = op;
        match &mut op {
            // A waiter that finds the queue full waits outside it (its ticket is not
            // stored), so a record never holds more than `queue_cap` waiters.
            Op::Acquire(a) => {
                if let Some(t) = a.ticket {
                    if old_len >= self.queue_cap && !old_tickets.contains(&t) {
                        a.ticket = None;
                        self.overflowed().insert(t);
                    } else {
                        self.overflowed().remove(&t);
                    }
                }
            }
            Op::Dequeue { ticket } => {
                self.overflowed().remove(ticket);
            }
            _ => {}
        }
        let is_dead = |o: &Owner| o.is_dead();
        let ctx = Ctx {
            now: now_millis(),
            is_dead: Some(&is_dead),
            waiter_ttl: Some(WAITER_TTL),
        };
        // Published even when the op fails: the fold may have changed the record.
        let applied = model::apply(&mut record, name, op, &ctx);
        self.store(s, &record, &mut stored)?;
        if is_idle_lock(&record) {
            fast::open(&s.fast, state, record.next_token);
        }
        drop(guard);
        let (reply, wake) = applied?;
        let (new_len, new_tickets) = queue_of(&record);
        if wake.all {
            self.notify(s, u32::MAX);
            for t in old_tickets.iter().chain(&new_tickets) {
                self.ring(i, *t);
            }
        } else {
            for t in &wake.tickets {
                self.ring(i, *t);
            }
            if new_len < old_len && new_len < self.queue_cap {
                // Places in the queue freed up: let as many outside waiters in.
                self.notify(s, (self.queue_cap - new_len) as u32);
            }
        }
        Ok(Ok(reply))
    }
}

/// The length of a permit queue and the tickets of its waiters and sleepers.
fn queue_of(record: &Record) -> (usize, Vec<u64>) {
    match &record.state {
        Some(State::Permits(p)) => (
            p.queue.len(),
            p.queue
                .iter()
                .map(|w| w.ticket)
                .chain(p.sleepers.iter().map(|s| s.ticket))
                .collect(),
        ),
        _ => (0, Vec::new()),
    }
}

/// Registers an async waiter on the word at region offset `at`, starting its ringer
/// thread if there is none. `seen` is the word's value the waiter checked against: a
/// new ringer starts from it, so a change between that check and the thread's start
/// is rung at once rather than at the next poll tick.
fn join_ringer(shared: &Arc<Shared>, at: usize, seen: u32) -> Result<Arc<Ringer>> {
    let mut ringers = shared.ringers();
    if let Some(r) = ringers.get(&at) {
        r.waiting.fetch_add(1, Ordering::Relaxed);
        return Ok(r.clone());
    }
    let ringer = Arc::new(Ringer {
        event: event_listener::Event::new(),
        waiting: AtomicU64::new(1),
    });
    ringers.insert(at, ringer.clone());
    let (sh, r) = (shared.clone(), ringer.clone());
    let spawned = std::thread::Builder::new()
        .name("locksmith-shm-ringer".into())
        .spawn(move || ring_loop(&sh, at, &r, seen));
    if let Err(e) = spawned {
        ringers.remove(&at);
        return Err(Error::backend(format!("cannot start a waiter thread: {e}")));
    }
    Ok(ringer)
}

/// An async waiter's registration with a ringer; dropping it (also when the wait is
/// cancelled) leaves.
struct Joined<'a> {
    shared: &'a Shared,
    ringer: Arc<Ringer>,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let _ringers = self.shared.ringers();
        self.ringer.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ring_loop(shared: &Shared, at: usize, ringer: &Ringer, seen: u32) {
    let word = shared.word_at(at);
    let mut last = seen;
    loop {
        futex::wait(word, last, Some(shared.poll), true);
        // Notify after every change seen since the last notification, and at every
        // poll interval (the waiters' retry tick).
        last = word.load(Ordering::Acquire);
        // A bell is rung for its own ticket(s): wake every task on it. The `seq`
        // word of a lock is mostly slept on by waiters outside a full queue, which
        // join as places free up: waking them all would have thousands retry for a
        // few places, so at most one queue's worth is woken per change or tick
        // (the rest follow on later ticks, in the order they began waiting).
        ringer.event.notify(if at < TABLE_AT {
            usize::MAX
        } else {
            shared.queue_cap
        });
        let mut ringers = shared.ringers();
        if ringer.waiting.load(Ordering::Relaxed) == 0 {
            ringers.remove(&at);
            return;
        }
    }
}

fn split(word: u64) -> (u64, usize) {
    (word >> 32, (word & 0xffff_ffff) as usize)
}

fn join(off: u64, len: usize) -> u64 {
    off << 32 | len as u64
}

impl Backend for ShmBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        let (mut i, mut state) = self.resolve(key)?;
        // A name is reclaimed only while idle, and found again (re-created if need be)
        // at once; a step meets a reclaimed slot rarely, and twice in a row only when
        // other processes keep reclaiming and re-creating it.
        let mut op = op;
        for _ in 0..64 {
            match self.shared.ctx_step(i, state, key.name(), op)? {
                Ok(reply) => return Ok(reply),
                Err(back) => op = back,
            }
            (i, state) = self.re_resolve(key)?;
        }
        Err(Error::backend(format!(
            "the shm: store /dev/shm/{}: the slot of '{}' kept being reclaimed",
            self.shared.url_name,
            key.name()
        )))
    }

    fn lock_fast(&self, key: &Key, thread: u64) -> Option<FastHold> {
        let (i, state) = self.resolve_cached(key)?;
        let proc = self.shared.my_proc()?;
        fast::try_acquire(&self.shared.slot(i).fast, state, proc, thread)
    }

    fn unlock_fast(&self, key: &Key, hold: FastHold) -> bool {
        // The hold keeps the name in its slot: the cached slot is still right.
        match self.resolve_cached(key) {
            Some((i, state)) => fast::try_release(&self.shared.slot(i).fast, state, hold),
            None => false,
        }
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        // If the name was reclaimed since, the watch is on its old slot: the sweep
        // woke that slot's watchers, and a later one is woken by the poll interval;
        // either way the waiter's next step finds the name again.
        let (i, _) = self.resolve(key)?;
        let s = self.shared.slot(i);
        // SeqCst on both sides (here: count, then read; `notify`: bump, then read the
        // count): either the step sees this watcher and wakes it, or this read sees
        // the bump and the wait returns at once.
        s.watchers.fetch_add(1, Ordering::SeqCst);
        let seq = s.seq.load(Ordering::SeqCst);
        // Both words are read now; which one to sleep on is decided when waiting, once
        // the step has said whether this ticket is queued or found the queue full.
        let bell = ticket.map(|t| (t, self.shared.bell(i, t).load(Ordering::SeqCst)));
        Ok(Box::new(ShmWatch {
            shared: self.shared.clone(),
            slot: i,
            seq,
            bell,
        }))
    }

    fn names(&self) -> Result<Vec<String>> {
        let sh = &self.shared;
        let mut names = Vec::new();
        for i in 0..sh.capacity {
            let s = sh.slot(i);
            let state = s.state.load(Ordering::Acquire);
            if is_named(state) {
                // A name reclaimed while it is read is skipped (it was idle).
                match sh.slot_name(s) {
                    Ok(name) if s.state.load(Ordering::Acquire) == state => {
                        names.push(String::from_utf8_lossy(&name).into_owned())
                    }
                    Err(e) if s.state.load(Ordering::Acquire) == state => return Err(e),
                    _ => {}
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn steps_wait(&self) -> bool {
        false
    }

    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        Ok(vec![
            std::path::Path::new("/dev/shm").join(&self.shared.url_name)
        ])
    }

    fn reclaim_idle(&self) -> Result<usize> {
        let m = self.shared.alloc_mutex()?;
        let _guard = m.lock()?;
        // Asked for: no back-off from an earlier sweep that found nothing.
        self.shared.header().sweep_after.store(0, Ordering::Relaxed);
        Ok(self.shared.sweep(true)? as usize)
    }

    fn usage(&self) -> Option<crate::Usage> {
        let h = self.shared.header();
        Some(crate::Usage {
            names: h.named.load(Ordering::Relaxed),
            limit: usable(self.shared.capacity),
            reclaimed: h.reclaimed.load(Ordering::Relaxed),
        })
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        let sh = &self.shared;
        let mut evicted = 0;
        for i in 0..sh.capacity {
            let s = sh.slot(i);
            let state = s.state.load(Ordering::Acquire);
            if !is_named(state) || s.record.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let m = sh.slot_mutex(i)?;
            let guard = m.lock()?;
            if s.state.load(Ordering::Acquire) != state {
                continue;
            }
            // A damaged record's tag is unknown: it stays (`break --force` resets it).
            // A tagged record never has an open fast word: no fold needed.
            let (mut record, mut stored) = match sh.load(s, "") {
                Err(Error::Damaged { .. }) => continue,
                loaded => loaded?,
            };
            if model::evict(&mut record, tag) {
                sh.store(s, &record, &mut stored)?;
                drop(guard);
                sh.notify(s, u32::MAX);
                evicted += 1;
            }
        }
        Ok(evicted)
    }
}

/// A registration on one slot's change sequence.
struct ShmWatch {
    shared: Arc<Shared>,
    slot: u32,
    seq: u32,
    /// The ticket and the value its bell had when the watch began.
    bell: Option<(u64, u32)>,
}

impl ShmWatch {
    /// The futex word to sleep on, the value it had, and the longest sleep.
    fn word(&self) -> (&AtomicU32, u32, Duration) {
        let sh = &self.shared;
        match self.bell {
            Some((t, v)) if !sh.overflowed().contains(&t) => (sh.bell(self.slot, t), v, sh.poll),
            Some(_) => (&sh.slot(self.slot).seq, self.seq, OVERFLOW_POLL),
            None => (&sh.slot(self.slot).seq, self.seq, sh.poll),
        }
    }

    /// Sleeps until the word moves on, `deadline`, or the poll interval.
    fn sleep(&self, deadline: Option<Instant>) {
        let (word, value, mut timeout) = self.word();
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        if timeout.is_zero() {
            return;
        }
        futex::wait(word, value, Some(timeout), true);
    }

    /// A queued waiter's sleep on its bell as an io_uring request, which wakes the
    /// task without a ringer thread in between; `None` where io_uring cannot serve
    /// (the caller uses a ringer). Only bells: a bell has at most one queue's worth of
    /// waiters, while crowds outside the queue share `seq`, where a ringer wakes a
    /// queue's worth of them per change rather than all.
    fn bell_wait(&self) -> Option<super::futex_async::FutexWait> {
        let sh = &self.shared;
        if !sh.uring {
            return None;
        }
        let (t, value) = self.bell?;
        if sh.overflowed().contains(&t) {
            return None;
        }
        let word = sh.bell(self.slot, t);
        // SAFETY: the bell lies in the region that `Shared` maps for as long as it
        // lives, and the wait keeps this `Arc<Shared>`.
        unsafe { super::futex_async::wait(word, value, sh.clone()) }
    }

    fn changed(&self) -> bool {
        let (word, value, _) = self.word();
        word.load(Ordering::Acquire) != value
    }
}

impl Drop for ShmWatch {
    fn drop(&mut self) {
        self.shared
            .slot(self.slot)
            .watchers
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watch for ShmWatch {
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        self.sleep(deadline);
        Ok(())
    }

    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.changed() || deadline.is_some_and(|d| d <= Instant::now()) {
                // Let the executor run other tasks before the caller retries, so that
                // retries never monopolise a worker.
                tokio::task::yield_now().await;
                return Ok(());
            }
            // Never a futex wait on the executor: in tokio, an io_uring request (a
            // queued waiter's bell) or the word's ringer thread; outside, a thread of
            // its own. Each lasts at most the poll interval.
            match tokio::runtime::Handle::try_current() {
                Ok(_) => {
                    if let Some(wait) = self.bell_wait() {
                        // The poll interval bounds the sleep, as the ringer's tick does;
                        // the wait is cancelled when it ends by timeout.
                        let (_, _, poll) = self.word();
                        let until = Instant::now() + poll;
                        let until = deadline.map_or(until, |d| d.min(until));
                        let _ = tokio::time::timeout_at(until.into(), wait).await;
                        return Ok(());
                    }
                    let (word, value, _) = self.word();
                    let at = self.shared.offset_of(word);
                    let ringer = Joined {
                        ringer: join_ringer(&self.shared, at, value)?,
                        shared: &self.shared,
                    };
                    let listener = ringer.ringer.event.listen();
                    // The ringer notifies after every change it sees after its last
                    // notification; a change before `listen` is caught here.
                    if self.shared.word_at(at).load(Ordering::Acquire) == value {
                        match deadline {
                            Some(d) => {
                                let _ = tokio::time::timeout_at(d.into(), listener).await;
                            }
                            None => listener.await,
                        }
                    }
                    drop(ringer);
                }
                Err(_) => {
                    let done = Arc::new(event_listener::Event::new());
                    let listener = done.listen();
                    let notify = done.clone();
                    std::thread::Builder::new()
                        .name("locksmith-shm-wait".into())
                        .spawn(move || {
                            self.sleep(deadline);
                            notify.notify(usize::MAX);
                        })
                        .map_err(|e| {
                            Error::backend(format!("cannot start a waiter thread: {e}"))
                        })?;
                    listener.await;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            "locksmith-test-shmspace-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Region::unlink(&self.0);
        }
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let o = ShmOptions::parse("app?capacity=10&arena=8M&mode=640&check_ms=5").unwrap();
        assert_eq!(o.name, "app");
        assert_eq!(o.capacity, Some(10));
        assert_eq!(o.arena, Some(8 << 20));
        assert_eq!(o.mode, 0o640);
        assert_eq!(o.check, Duration::from_millis(5));
        assert!(!ShmOptions::parse("app?uring=off").unwrap().uring);
        assert!(ShmOptions::parse("app").unwrap().uring);
        for bad in [
            "",
            "?capacity=1",
            "a?uring=maybe",
            "a?capacity=0",
            "a?capacity=x",
            "a?arena=1",
            "a?mode=999",
            "a?check_ms=0",
            "a?colour=blue",
        ] {
            assert!(ShmOptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classes_cover_lengths() {
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(64), Some(0));
        assert_eq!(class_of(65), Some(1));
        assert_eq!(class_of(MIN_BLOCK << (CLASSES - 1)), Some(CLASSES - 1));
        assert_eq!(class_of((MIN_BLOCK << (CLASSES - 1)) + 1), None);
    }

    #[test]
    fn names_short_and_long_share_slots_across_opens_and_idle_ones_make_room() {
        let name = unique("names");
        let _c = Cleanup(name.clone());
        let url = format!("{name}?capacity=3");
        let a = ShmBackend::open(&url).unwrap();
        let b = ShmBackend::open(&name).unwrap();
        let long = "x".repeat(200);
        let ia = a.shared.find_or_create("deploy").unwrap();
        let ib = b.shared.find_or_create("deploy").unwrap();
        assert_eq!(ia, ib);
        let la = a.shared.find_or_create(&long).unwrap();
        assert_eq!(b.shared.find_or_create(&long).unwrap(), la);
        assert_ne!(la, ia);
        assert_eq!(a.names().unwrap(), vec!["deploy", long.as_str()]);
        // The third name crowds the table (7/8 of it named): the idle names make room.
        a.shared.find_or_create("third").unwrap();
        assert_eq!(a.names().unwrap(), vec!["third"]);
        b.shared.find_or_create("fourth").unwrap();
        assert_eq!(b.names().unwrap(), vec!["fourth", "third"]);
        // Another capacity than the region's is refused, not silently ignored.
        assert!(ShmBackend::open(&format!("{name}?capacity=4")).is_err());
    }

    #[test]
    fn item13_a_miss_on_a_full_table_reads_a_few_slots_not_the_table() {
        let name = unique("miss");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&format!("{name}?capacity=4096")).unwrap();
        let sh = &b.shared;
        let usable = usable(4096) as u32;
        for i in 0..usable {
            sh.find_or_create(&format!("job-{i}")).unwrap();
        }
        assert_eq!(sh.header().named.load(Ordering::Relaxed), u64::from(usable));
        // Every lookup, hit or miss, stops after `max_probe + 1` slots (before: a miss
        // on a full table read all 4096).
        let longest = sh.header().max_probe.load(Ordering::Relaxed);
        assert!(longest < 4096 / 8, "the longest probe is {longest} slots");
        for i in 0..100 {
            let missing = format!("missing-{i}");
            assert_eq!(sh.probe(&missing, fnv1a(missing.as_bytes())).unwrap(), None);
        }
    }

    #[test]
    fn racing_creators_get_one_slot() {
        let name = unique("race");
        let _c = Cleanup(name.clone());
        let backends: Vec<_> = (0..4)
            .map(|_| ShmBackend::open(&format!("{name}?capacity=64")).unwrap())
            .collect();
        let found: Vec<Vec<u32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = backends
                .iter()
                .map(|b| {
                    scope.spawn(move || {
                        (0..40)
                            .map(|n| b.shared.find_or_create(&format!("n{n}")).unwrap().0)
                            .collect::<Vec<u32>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(found.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(backends[0].names().unwrap().len(), 40);
    }

    #[test]
    fn blocks_are_reused_and_the_arena_runs_out_clearly() {
        let name = unique("arena");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&format!("{name}?capacity=1&arena=4M")).unwrap();
        let sh = &b.shared;
        let x = sh.alloc(100).unwrap();
        sh.free(join(x, 100)).unwrap();
        assert_eq!(sh.alloc(120).unwrap(), x, "a freed block is reused");
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = sh.alloc(1 << 20) {
                err = Some(e.to_string());
                break;
            }
        }
        assert!(err.unwrap().contains("arena="));
        assert!(sh.alloc(usize::MAX / 2).is_err());
    }

    fn acquire_op(owner: &Owner, lease: Option<Millis>) -> Op {
        Op::Acquire(model::Acquire {
            kind: model::PermitKind::Lock,
            mode: model::Mode::Exclusive,
            owner: owner.clone(),
            lease,
            tag: None,
            ticket: None,
        })
    }

    fn granted(reply: Reply) -> model::Grant {
        match reply {
            Reply::Granted(g) => g,
            other => panic!("not granted: {other:?}"),
        }
    }

    fn holders(b: &ShmBackend, key: &Key) -> Vec<model::Holder> {
        match b.step(key, Op::Holders).unwrap() {
            Reply::Holders { holders, .. } => holders,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_lock_lives_in_its_word_until_someone_looks() {
        let name = unique("fast");
        let _c = Cleanup(name.clone());
        let a = ShmBackend::open(&name).unwrap();
        let b = ShmBackend::open(&name).unwrap();
        let key = Key::new("deploy");
        let hold = a.lock_fast(&key, 7).expect("free");
        let (i, _) = a.resolve(&key).unwrap();
        let slot = a.shared.slot(i);
        assert_eq!(slot.record.load(Ordering::Relaxed), 0, "no record written");
        assert_eq!(a.lock_fast(&key, 8), None, "held");
        // Another handle sees the fast hold, as this thread's: the record has it now.
        let seen = holders(&b, &Key::new("deploy"));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].token, hold.token);
        assert_eq!(seen[0].owner, Owner::with_thread(7));
        assert!(
            !a.unlock_fast(&key, hold),
            "folded: released through the record"
        );
        a.step(&key, Op::Release { token: hold.token }).unwrap();
        let next = a.lock_fast(&key, 7).expect("open again once idle");
        assert!(next.token > hold.token);
        assert!(a.unlock_fast(&key, next));
        // Its owner re-acquiring through the general path is told, not queued.
        let again = a.lock_fast(&key, 9).unwrap();
        let err = a.step(&key, acquire_op(&Owner::with_thread(9), None));
        assert!(matches!(err, Err(Error::WouldDeadlock { .. })), "{err:?}");
        assert!(!a.unlock_fast(&key, again));
        a.step(&key, Op::Release { token: again.token }).unwrap();
    }

    /// The pid of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// Writes an entry for a process that is gone into the process table, as a
    /// killed process leaves its own; answers its index.
    fn dead_entry(sh: &Shared, i: usize) -> usize {
        let me = liveness::this_process();
        let p = sh.proc(i);
        p.boot.store(me.boot, Ordering::Relaxed);
        p.machine.store(me.machine, Ordering::Relaxed);
        p.pidns.store(me.pidns, Ordering::Relaxed);
        p.start.store(1, Ordering::Relaxed);
        p.pid.store(dead_pid(), Ordering::Relaxed);
        p.host_len.store(0, Ordering::Relaxed);
        p.used.store(1, Ordering::Release);
        i
    }

    #[test]
    fn a_dead_fast_holder_is_recovered_and_tokens_go_on() {
        let name = unique("deadfast");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&name).unwrap();
        let sh = &b.shared;
        let key = Key::new("deploy");
        let (i, state) = b.resolve(&key).unwrap();
        // What a process killed right after its compare-and-swap leaves behind.
        let dead = dead_entry(sh, fast::PROCS - 1);
        let hold = fast::try_acquire(&sh.slot(i).fast, state, dead, 3).unwrap();
        let me = Owner::current_thread();
        let grant = granted(b.step(&key, acquire_op(&me, None)).unwrap());
        assert!(grant.previous_owner_died);
        assert!(grant.token > hold.token);
        b.step(&key, Op::Release { token: grant.token }).unwrap();
        // Its entry is reused once no word names it.
        let m = sh.alloc_mutex().unwrap();
        let g = m.lock().unwrap();
        assert_eq!(sh.reclaim_procs(), Some(dead));
        drop(g);
        assert_eq!(sh.proc(dead).used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_step_killed_while_folding_loses_no_hold_and_no_token() {
        let name = unique("torn");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&name).unwrap();
        let sh = &b.shared;
        let key = Key::new("deploy");
        let hold = b.lock_fast(&key, 4).unwrap();
        let (i, _) = b.resolve(&key).unwrap();
        let s = sh.slot(i);
        // Every prefix of a fold: killed after raising the counter and closing the
        // word, before the record was written.
        let closed = fast::close(&s.fast, raise_counter(s));
        assert!(matches!(closed, fast::Closed::Held { token, .. } if token == hold.token));
        assert_eq!(s.next_token.load(Ordering::Relaxed), hold.token);
        assert_eq!(s.record.load(Ordering::Relaxed), 0);
        // The next step finds the hold in the word.
        let seen = holders(&b, &key);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].token, hold.token);
        let other = Owner::new_task();
        assert!(matches!(
            b.step(&key, acquire_op(&other, None)).unwrap(),
            Reply::Blocked { .. }
        ));
        assert!(!b.unlock_fast(&key, hold));
        b.step(&key, Op::Release { token: hold.token }).unwrap();
        let next = granted(b.step(&key, acquire_op(&other, Some(60_000))).unwrap());
        assert!(next.token > hold.token);
        assert!(!next.previous_owner_died);
    }

    #[test]
    fn a_reclaimed_slot_never_hands_its_new_name_to_a_stale_cache() {
        let name = unique("stale");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&format!("{name}?capacity=1")).unwrap();
        let old = Key::new("old");
        let hold = b.lock_fast(&old, 1).unwrap();
        assert!(b.unlock_fast(&old, hold));
        let (i, state) = b.resolve(&old).unwrap();
        assert_eq!(b.reclaim_idle().unwrap(), 1);
        // The slot's floor holds the fast tokens.
        assert!(b.shared.header().token_floor.load(Ordering::Relaxed) >= hold.token);
        let (j, new_state) = b.shared.find_or_create("new").unwrap();
        assert_eq!(j, i, "the one usable slot");
        assert_ne!(new_state, state);
        // A handle that still caches "old" there cannot take "new"'s lock.
        assert_eq!(fast::try_acquire(&b.shared.slot(i).fast, state, 0, 1), None);
        let again = b.lock_fast(&Key::new("new"), 1).unwrap();
        assert!(again.token > hold.token);
    }

    #[test]
    fn a_record_that_keeps_its_size_class_takes_no_allocation_mutex() {
        let name = unique("spare");
        let _c = Cleanup(name.clone());
        let b = ShmBackend::open(&name).unwrap();
        let key = Key::new("deploy");
        let owner = Owner::new_task();
        let hold = granted(b.step(&key, acquire_op(&owner, Some(60_000))).unwrap());
        // Two renewals: the first makes a spare of the old block, the second swaps.
        b.step(
            &key,
            Op::Renew {
                token: hold.token,
                lease: 50_000,
            },
        )
        .unwrap();
        let (i, _) = b.resolve(&key).unwrap();
        let s = b.shared.slot(i);
        assert_ne!(s.spare.load(Ordering::Relaxed), 0, "the old block is kept");
        let m = b.shared.alloc_mutex().unwrap();
        let held = m.lock().unwrap();
        // The placed mutex is not recursive: a step that needed it would fail here.
        for lease in [40_000, 30_000, 20_000] {
            b.step(
                &key,
                Op::Renew {
                    token: hold.token,
                    lease,
                },
            )
            .unwrap();
        }
        drop(held);
        let spare = s.spare.load(Ordering::Relaxed);
        assert_ne!(split(spare).0, split(s.record.load(Ordering::Relaxed)).0);
        // A step killed between publishing the spare and naming the old block: the
        // spare names the record's block, and is not written over.
        s.spare
            .store(s.record.load(Ordering::Relaxed), Ordering::Relaxed);
        b.step(
            &key,
            Op::Renew {
                token: hold.token,
                lease: 10_000,
            },
        )
        .unwrap();
        let seen = holders(&b, &key);
        assert_eq!((seen.len(), seen[0].token), (1, hold.token));
        b.step(&key, Op::Release { token: hold.token }).unwrap();
        // Reclaiming the name frees both blocks, once each: no block is handed out
        // twice afterwards.
        assert_eq!(b.reclaim_idle().unwrap(), 1);
        assert_eq!(s.spare.load(Ordering::Relaxed), 0);
        let mut offsets: Vec<u64> = (0..4)
            .flat_map(|class| (0..4).map(move |_| MIN_BLOCK << class))
            .map(|len| b.shared.alloc(len).unwrap())
            .collect();
        let n = offsets.len();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), n, "a block was freed twice");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let name = unique("foreign");
        let _c = Cleanup(name.clone());
        let _r = Region::create(&name, 4096).unwrap();
        let err = ShmBackend::open(&name).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
