//! The floor of the kernel's BPF statistics: empty programs (`r0 = 1; exit`) attached to a
//! cgroup on the hooks a TCP connection runs lbctl's programs on (`connect4` for the client,
//! `getpeername4` for the accepted socket). Their `run_time_ns` per run is what the hook and
//! the statistics themselves cost on this machine before a program does anything (the
//! dispatch, the two clock reads around the run); lbctl's figures are read against it.
//!
//! The programs are built from two instructions and loaded with `BPF_PROG_LOAD`, attached with
//! `BPF_LINK_CREATE`: no object file, nothing pinned. Closing the descriptors (on drop, or
//! when the process dies in any way) detaches and frees them.
use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};

use super::kernel_time::Attached;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// A hook of a `cgroup_sock_addr` program: its section-style name and `bpf_attach_type`.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub name: &'static str,
    attach_type: u32,
}

/// `BPF_CGROUP_INET4_CONNECT`: every IPv4 connect.
pub const CONNECT4: Hook = Hook {
    name: "connect4",
    attach_type: 10,
};
/// `BPF_CGROUP_INET4_GETPEERNAME`: `getpeername()`, and `accept()` asking for the peer.
pub const GETPEERNAME4: Hook = Hook {
    name: "getpeername4",
    attach_type: 29,
};

/// The `bpf_attr` of `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `bpf_attr` of `BPF_LINK_CREATE` (no target-specific part).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// The `bpf_attr` of `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `r0 = 1` (allow), `exit`: `BPF_ALU64 | BPF_MOV | BPF_K` into r0, then `BPF_JMP | BPF_EXIT`.
const EMPTY: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];

/// `bpf(cmd, attr)`: a descriptor (or 0) on success.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix of the size passed; the kernel
    // reads (and for GET_INFO writes) at most that many bytes of it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a descriptor the kernel just returned to this process, owned by no one
    // else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Empty programs attached to one cgroup, one per hook, while this lives.
pub struct EmptyPrograms {
    /// Link descriptors first: dropped before the programs.
    _links: Vec<OwnedFd>,
    _programs: Vec<OwnedFd>,
    attached: Vec<Attached>,
}

impl EmptyPrograms {
    pub fn attach(cgroup: &Path, hooks: &[Hook]) -> Result<Self> {
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let license = CString::new("GPL").expect("no NUL");
        let (mut links, mut programs, mut attached) = (Vec::new(), Vec::new(), Vec::new());
        for hook in hooks {
            let mut name = [0u8; 16];
            let full = format!("empty_{}", hook.name);
            let bytes = &full.as_bytes()[..full.len().min(15)];
            name[..bytes.len()].copy_from_slice(bytes);
            let mut load = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                insn_cnt: EMPTY.len() as u32,
                insns: EMPTY.as_ptr() as u64,
                license: license.as_ptr() as u64,
                prog_name: name,
                expected_attach_type: hook.attach_type,
                ..Default::default()
            };
            let program = owned(
                bpf(BPF_PROG_LOAD, &mut load)
                    .with_context(|| format!("loading an empty {} program", hook.name))?,
            );
            let mut link = LinkCreateAttr {
                prog_fd: program.as_raw_fd() as u32,
                target_fd: dir.as_raw_fd() as u32,
                attach_type: hook.attach_type,
                ..Default::default()
            };
            let link = owned(bpf(BPF_LINK_CREATE, &mut link).with_context(|| {
                format!(
                    "attaching the empty {} program to {}",
                    hook.name,
                    cgroup.display()
                )
            })?);
            attached.push(Attached {
                name: full,
                id: program_id(&program)?,
            });
            links.push(link);
            programs.push(program);
        }
        if attached.is_empty() {
            bail!("no hook to attach an empty program to");
        }
        Ok(Self {
            _links: links,
            _programs: programs,
            attached,
        })
    }

    /// The programs, for [`super::kernel_time::snapshot`].
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }
}

/// The kernel id of a loaded program (`bpf_prog_info.id`, the second `u32`).
fn program_id(program: &OwnedFd) -> Result<u32> {
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading an empty program's id")?;
    Ok(info[1])
}
