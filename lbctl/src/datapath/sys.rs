//! Every system call the datapath makes outside aya: the BPF commands aya 0.14 does not offer
//! (opening a pin read-only, `BPF_LINK_UPDATE`, creating and pinning the small state map, the
//! batched map reads, updates and deletions `BPF_MAP_LOOKUP_BATCH`/`BPF_MAP_UPDATE_BATCH`/
//! `BPF_MAP_DELETE_BATCH`),
//! filesystem facts (`statfs`, `mount` of bpffs, through `rustix`) and the network namespace
//! cookie. Nothing else in lbctl calls `libc` or `bpf(2)` directly.
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `BPF_TRACE_ITER` (`enum bpf_attach_type`).
const BPF_TRACE_ITER: u32 = 28;
/// `BPF_F_RDONLY` (file flag of `BPF_OBJ_GET`).
const BPF_F_RDONLY: u32 = 1 << 3;
/// Filesystem magics of linux/magic.h (as libc defines them; `c_long` is `i64` on 64-bit
/// targets only, hence the casts).
#[allow(clippy::unnecessary_cast)]
const BPF_FS: i64 = libc::BPF_FS_MAGIC as i64;
#[allow(clippy::unnecessary_cast)]
const CGROUP2_FS: i64 = libc::CGROUP2_SUPER_MAGIC as i64;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

/// Calls `bpf(cmd, attr, size_of(attr))`; returns the non-negative result.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` expects (a valid prefix of it, every
/// padding byte spelled out), and every pointer in it must stay valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` matches `cmd`; the kernel reads at most
    // size_of::<T>() bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Like [`bpf`], for commands that write results back into `attr`.
///
/// # Safety
/// As for [`bpf`].
unsafe fn bpf_mut<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` matches `cmd`; the kernel reads and writes at most
    // size_of::<T>() bytes of it, and `attr` is exclusively borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Wraps a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful bpf(2) call that creates a descriptor; nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The `BPF_OBJ_GET`/`BPF_OBJ_PIN` member of `union bpf_attr`, zero-padded to 8 bytes.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// Opens a pinned object (map or link). `read_only` asks for a read-only descriptor: lookups
/// work, updates fail with EPERM.
pub(crate) fn obj_get(path: &Path, read_only: bool) -> io::Result<OwnedFd> {
    let c_path = c_path(path)?;
    let attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: if read_only { BPF_F_RDONLY } else { 0 },
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET member; its path outlives the call.
    unsafe { bpf(BPF_OBJ_GET, &attr) }.map(owned)
}

/// Pins a BPF object (here: the state map) at `path`.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = c_path(path)?;
    let attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: `attr` is the BPF_OBJ_PIN member; its path outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &attr) }.map(drop)
}

/// The `BPF_LINK_UPDATE` member of `union bpf_attr`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Replaces the program of a link in one step (`BPF_LINK_UPDATE`): the hook runs the old
/// program or the new one, never none. aya 0.14 keeps its own wrapper crate-private.
pub(crate) fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: `attr` is the BPF_LINK_UPDATE member; it holds descriptors only.
    unsafe { bpf(BPF_LINK_UPDATE, &attr) }.map(drop)
}

/// The `link_create` member of `union bpf_attr`, up to the iterator's `iter_info`.
#[repr(C)]
struct LinkCreateIterAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    pad: u32,
}

/// Creates a link for an iterator program (`BPF_LINK_CREATE`, `BPF_TRACE_ITER`) without
/// parameters (the `tcp` and `udp` iterators take none). aya's `Iter::attach` hides the link's
/// descriptor, and [`iter_create`] needs it for every run.
pub(crate) fn iter_link_create(program: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = LinkCreateIterAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: 0,
        iter_info_len: 0,
        pad: 0,
    };
    // SAFETY: `attr` is the BPF_LINK_CREATE member; it holds a descriptor and no pointers.
    unsafe { bpf(BPF_LINK_CREATE, &attr) }.map(owned)
}

/// The `iter_create` member of `union bpf_attr`.
#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// Starts one run of an iterator link (`BPF_ITER_CREATE`): reading the returned file runs the
/// program over the objects, here the sockets of the calling thread's network namespace.
pub(crate) fn iter_create(link: BorrowedFd<'_>) -> io::Result<std::fs::File> {
    let attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    // SAFETY: `attr` is the BPF_ITER_CREATE member; it holds a descriptor only.
    unsafe { bpf(BPF_ITER_CREATE, &attr) }.map(|fd| std::fs::File::from(owned(fd)))
}

/// Moves the calling thread into the network namespace `netns` refers to (`setns(2)`,
/// `CLONE_NEWNET`; needs CAP_SYS_ADMIN). Other threads stay where they are.
pub(crate) fn enter_netns(netns: BorrowedFd<'_>) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(
        netns,
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(io::Error::from)
}

/// The `batch` member of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: number of elements; out: number processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch call that stopped early: the first `done` elements were processed, element `done`
/// failed with `error`, the rest were not attempted.
#[derive(Debug)]
pub(crate) struct BatchFailure {
    pub done: usize,
    pub error: io::Error,
}

fn run_batch(cmd: libc::c_long, mut attr: BatchAttr) -> Result<(), BatchFailure> {
    let asked = attr.count as usize;
    // SAFETY: `attr` is the batch member; the caller's key and value arrays it points to
    // outlive the call and hold `count` elements of the map's key and value sizes.
    match unsafe { bpf_mut(cmd, &mut attr) } {
        Ok(_) => Ok(()),
        Err(error) => Err(BatchFailure {
            // The kernel reports how many elements it processed before the failing one.
            done: (attr.count as usize).min(asked),
            error,
        }),
    }
}

/// `BPF_MAP_UPDATE_BATCH`: writes `keys[i] -> values[i]` in order, one element at a time (each
/// element is one ordinary update, atomic for a reader), in one system call.
///
/// The map's key and value sizes must be `size_of::<K>()` and `size_of::<V>()` (checked when
/// the maps are opened), and `K` and `V` plain `repr(C)` data without padding.
pub(crate) fn map_update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchFailure> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    run_batch(
        BPF_MAP_UPDATE_BATCH,
        BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        },
    )
}

/// `BPF_MAP_LOOKUP_BATCH` over an array map: reads up to `keys.len()` elements in index order,
/// starting after index `after` (at index 0 when `None`), into `keys` and `values`. `values`
/// holds `keys.len()` values of `value_size` bytes each: the map's value size, or for a per-CPU
/// map its value size rounded up to 8 bytes times the number of possible CPUs. Returns how many
/// were read: fewer than asked only at the end of the array.
pub(crate) fn array_lookup_batch(
    map: BorrowedFd<'_>,
    after: Option<u32>,
    keys: &mut [u32],
    values: &mut [u8],
    value_size: usize,
) -> io::Result<usize> {
    assert!(
        values.len() >= keys.len() * value_size,
        "room for one value per key"
    );
    if keys.is_empty() {
        return Ok(0);
    }
    let in_key: u32 = after.unwrap_or(0);
    let mut out_key: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: if after.is_some() {
            &in_key as *const u32 as u64
        } else {
            0
        },
        out_batch: &mut out_key as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is the batch member; `in_key`, `out_key` (one array key each) and the
    // caller's `keys` and `values` (room for `count` keys and values, checked above) outlive
    // the call.
    match unsafe { bpf_mut(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => Ok(attr.count as usize),
        // The end of the array: `count` says how many were read before it.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(attr.count as usize),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_BATCH`: deletes `keys` in order in one system call; stops at the first key
/// that fails (ENOENT for a missing one). Same layout requirements as [`map_update_batch`].
pub(crate) fn map_delete_batch<K: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
) -> Result<(), BatchFailure> {
    if keys.is_empty() {
        return Ok(());
    }
    run_batch(
        BPF_MAP_DELETE_BATCH,
        BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: 0,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        },
    )
}

/// Elements one `BPF_MAP_LOOKUP_BATCH` call of [`array_lookup_all`] reads.
const LOOKUP_CHUNK: usize = 16_384;

/// Calls `each(index, value)` for every element of an array map of `len` elements
/// (`max_entries`), in index order, read with `BPF_MAP_LOOKUP_BATCH` ([`LOOKUP_CHUNK`] elements
/// per call, into buffers of that size) rather than one `bpf()` call per element. Each element
/// is copied whole (atomic per element for a concurrent writer, as a single lookup is).
///
/// The map must be an array whose value size is `size_of::<V>()`, `V` plain `repr(C)` data
/// valid for any bytes.
pub(crate) fn array_lookup_each<V: Copy>(
    map: BorrowedFd<'_>,
    len: u32,
    mut each: impl FnMut(u32, V),
) -> io::Result<()> {
    let len = len as usize;
    let chunk = len.min(LOOKUP_CHUNK);
    let size = size_of::<V>();
    let mut keys = vec![0u32; chunk];
    let mut bytes = vec![0u8; chunk * size];
    let mut after = None;
    let mut pos = 0;
    while pos < len {
        let count = (len - pos).min(chunk);
        let got = array_lookup_batch(map, after, &mut keys[..count], &mut bytes, size)?;
        for (i, key) in keys[..got].iter().enumerate() {
            // SAFETY: `bytes` holds `got` values of `size_of::<V>()` bytes each, copied by the
            // kernel from the map's elements; `V` is plain data valid for any bytes (the
            // caller's guarantee), read unaligned from the byte buffer.
            let value = unsafe { bytes.as_ptr().add(i * size).cast::<V>().read_unaligned() };
            each(*key, value);
        }
        pos += got;
        if got < count {
            break;
        }
        after = keys[..got].last().copied();
    }
    Ok(())
}

/// Calls `each(index, value)` for every element of an array map of `len` elements created with
/// `BPF_F_MMAPABLE`, in index order, reading the elements through a read-only shared mapping of
/// the map (one window of a few hundred KiB at a time, unmapped before the next): no system call
/// per element or batch, and no copy of the whole array at once. An element is read as a
/// concurrent update leaves it (the kernel's own lookup copies it without a lock too).
///
/// The map must be such an array whose value size rounds up (to 8 bytes, the kernel's element
/// size) to `size_of::<V>()` rounded up to 8, `V` plain `repr(C)` data valid for any bytes.
pub(crate) fn array_mmap_each<V: Copy>(
    map: BorrowedFd<'_>,
    len: u32,
    mut each: impl FnMut(u32, V),
) -> io::Result<()> {
    let elem = size_of::<V>().next_multiple_of(8);
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| io::Error::other("no page size"))?;
    let (mut a, mut b) = (elem, page);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    // A window holds whole elements and starts on a page: a multiple of lcm(elem, page).
    let unit = elem / a * page;
    let window = unit * (384 * 1024 / unit).max(1);
    let total = (len as usize * elem).next_multiple_of(page);
    let mut offset = 0;
    while offset < total {
        let size = window.min(total - offset);
        // SAFETY: a new read-only shared mapping of `size` bytes of the map at a page-aligned
        // offset inside its (page-rounded) value area; nothing else refers to the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let first = offset / elem;
        let last = ((offset + size) / elem).min(len as usize);
        for i in first..last {
            // SAFETY: element `i` lies wholly inside the mapping (`offset` is a multiple of
            // `elem`, and `last` stops before the mapping's end); `V` is valid for any bytes
            // and the read copies it out.
            let value = unsafe {
                std::ptr::read_unaligned(base.cast::<u8>().add(i * elem - offset).cast())
            };
            each(i as u32, value);
        }
        // SAFETY: the mapping made above, no longer read.
        unsafe { libc::munmap(base, size) };
        offset += size;
    }
    Ok(())
}

/// A read-write shared mapping of a whole array map created with `BPF_F_MMAPABLE` (the
/// writer's `lb_backends` and `lb_slots`, mapped for the writer's life): elements are written
/// with plain stores, no system call. Only user space writes these arrays (the programs read
/// them), so a value read back is the last one written.
pub(crate) struct ArrayMapping {
    base: std::ptr::NonNull<u8>,
    size: usize,
    elem: usize,
    len: u32,
}

// SAFETY: the mapping is owned by this value alone (no aliasing Rust references to it); moving
// it to another thread moves that ownership, and `&self` only reads.
unsafe impl Send for ArrayMapping {}
// SAFETY: `&self` methods only read elements (copies); writes need `&mut self`.
unsafe impl Sync for ArrayMapping {}

impl ArrayMapping {
    /// Maps the `len` elements of `value_size` bytes of `map` read-write. Fails on a map that
    /// is not `BPF_F_MMAPABLE` or a descriptor opened read-only.
    pub(crate) fn new(map: BorrowedFd<'_>, len: u32, value_size: usize) -> io::Result<Self> {
        let elem = value_size.next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let size = (len as usize * elem).next_multiple_of(page).max(page);
        // SAFETY: a new shared mapping of the map's (page-rounded) value area at offset 0;
        // nothing else refers to the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Self {
            base,
            size,
            elem,
            len,
        })
    }

    /// Writes element `index` whole (a `V` no larger than the element, plain data). The store
    /// is visible to the programs once made; callers publish what points to it with a later
    /// `bpf()` call (see [`ArrayMapping::publish_fence`]).
    /// Elements of the array.
    pub(crate) fn elements(&self) -> u32 {
        self.len
    }

    pub(crate) fn write<V: Copy>(&mut self, index: u32, value: V) -> Result<(), String> {
        if index >= self.len {
            return Err(format!(
                "index {index} is beyond the array's {} elements",
                self.len
            ));
        }
        debug_assert!(size_of::<V>() <= self.elem);
        // SAFETY: element `index` lies inside the mapping (index < len, size >= len * elem),
        // starts at a multiple of 8 bytes from a page-aligned base (aligned for `V`, whose
        // alignment is at most 8), and is written whole, by value. Ordering: the programs
        // reach an element written here only through what a later `bpf()` call of the writer
        // publishes (a range of `lb_slots` through its master, a new backend through a slot of
        // such a range), and `publish_fence` plus that system call order this store before it.
        unsafe {
            std::ptr::write_volatile(
                self.base
                    .as_ptr()
                    .add(index as usize * self.elem)
                    .cast::<V>(),
                value,
            );
        }
        Ok(())
    }

    /// Element `index` (a `V` no larger than the element, plain data), as last written; `None`
    /// beyond the array.
    pub(crate) fn read<V: Copy>(&self, index: u32) -> Option<V> {
        if index >= self.len {
            return None;
        }
        debug_assert!(size_of::<V>() <= self.elem);
        // SAFETY: element `index` lies inside the mapping (index < len, size >= len * elem),
        // starts at a multiple of 8 bytes from a page-aligned base (aligned for `V`), and `V`
        // is plain data, so any bytes are a valid value; read by value. Only the writer stores
        // into the elements it reads back (the programs only read them).
        Some(unsafe {
            std::ptr::read_volatile(
                self.base
                    .as_ptr()
                    .add(index as usize * self.elem)
                    .cast::<V>(),
            )
        })
    }

    /// Writes one field of element `index`: `value` at byte `offset` of the element (plain data,
    /// naturally aligned: `offset` a multiple of its alignment). The other bytes of the element
    /// are not touched, so a program reading the element meanwhile sees each of them as it was.
    pub(crate) fn write_field<F: Copy>(
        &mut self,
        index: u32,
        offset: usize,
        value: F,
    ) -> Result<(), String> {
        if index >= self.len {
            return Err(format!(
                "index {index} is beyond the array's {} elements",
                self.len
            ));
        }
        assert!(
            offset + size_of::<F>() <= self.elem && offset.is_multiple_of(align_of::<F>()),
            "a field inside the element, aligned"
        );
        // SAFETY: the field lies inside element `index` of the mapping (checked above), at an
        // offset aligned for `F` from an 8-byte-aligned element start; written by value.
        unsafe {
            std::ptr::write_volatile(
                self.base
                    .as_ptr()
                    .add(index as usize * self.elem + offset)
                    .cast::<F>(),
                value,
            );
        }
        Ok(())
    }

    /// Orders every store made so far before whatever the caller does next (the `bpf()` call
    /// that publishes a master pointing to the elements).
    pub(crate) fn publish_fence() {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for ArrayMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not referred to any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
    }
}

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, up to `map_ifindex`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

/// Creates a one-entry array map of `value_size` bytes (key: `u32` 0) named `name`.
pub(crate) fn create_array_map(name: &str, value_size: u32) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    let len = name.len().min(15);
    map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        map_ifindex: 0,
    };
    // SAFETY: `attr` is a prefix of the BPF_MAP_CREATE member without pointers.
    unsafe { bpf(BPF_MAP_CREATE, &attr) }.map(owned)
}

/// The filesystem type (`f_type`, a `*_MAGIC` of linux/magic.h) of the filesystem holding
/// `path`.
pub(crate) fn fs_type(path: &Path) -> io::Result<i64> {
    let st = rustix::fs::statfs(path)?;
    Ok(st.f_type as i64)
}

/// Whether `path` is on a bpf filesystem.
pub(crate) fn is_bpffs(path: &Path) -> bool {
    fs_type(path).is_ok_and(|t| t == BPF_FS)
}

/// Whether `path` is on the cgroup v2 filesystem.
pub(crate) fn is_cgroup2(path: &Path) -> bool {
    fs_type(path).is_ok_and(|t| t == CGROUP2_FS)
}

/// Mounts a bpffs (mode 0700) on `target`. Needs CAP_SYS_ADMIN in the mount namespace's owner.
pub(crate) fn mount_bpffs(target: &Path) -> io::Result<()> {
    rustix::mount::mount(
        "bpffs",
        target,
        "bpf",
        rustix::mount::MountFlags::empty(),
        c"mode=0700",
    )?;
    Ok(())
}

/// The cookie of the network namespace this process runs in (`SO_NETNS_COOKIE`, Linux 5.14+):
/// what `bpf_get_netns_cookie` returns for a socket in the same namespace. (`rustix` has no
/// wrapper for this option.)
pub(crate) fn netns_cookie() -> io::Result<u64> {
    /// From asm-generic/socket.h; the libc crate does not define it.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else; OwnedFd closes it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which lives across the call;
    // the socket stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
