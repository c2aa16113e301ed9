//! The one BPF command aya 0.14 does not offer: opening a pinned object read-only.
use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_F_RDONLY: u32 = 1 << 3;

/// The `BPF_OBJ_GET` member of `union bpf_attr`, zero-padded to 8 bytes.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// Opens a pinned map with a read-only file descriptor: lookups work, updates fail with EPERM.
pub(crate) fn open_pinned_read_only(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: BPF_OBJ_GET reads `attr` (a valid, fully initialized bpf_attr prefix whose path
    // pointer outlives the call) and returns a new file descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
