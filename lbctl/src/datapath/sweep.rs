//! Running socket iterators (`iter/tcp`, `iter/udp`): attaching them, running them in several
//! network namespaces, reading their records. An iterator walks the sockets of the network
//! namespace of the thread that starts it, so other namespaces are covered by a thread of their
//! own that enters each one (`setns`, which needs CAP_SYS_ADMIN) and ends with the walk: no
//! thread of the agent ever stays in a pod's namespace.
use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use aya::programs::Iter;

use super::{DatapathError, sys};

/// Loads the iterator program `program` of `ebpf` for the kernel's `target` iterator ("tcp",
/// "udp") and creates its link, which every run starts from.
pub(crate) fn link(
    ebpf: &mut aya::Ebpf,
    btf: &aya::Btf,
    program: &str,
    target: &str,
) -> Result<OwnedFd, DatapathError> {
    let iter: &mut Iter = ebpf
        .program_mut(program)
        .ok_or_else(|| DatapathError::MissingProgram(program.to_owned()))?
        .try_into()
        .map_err(|e| DatapathError::program(program, e))?;
    iter.load(target, btf)
        .map_err(|e| DatapathError::program(program, e))?;
    let fd = iter.fd().map_err(|e| DatapathError::program(program, e))?;
    sys::iter_link_create(fd.as_fd()).map_err(|e| DatapathError::Link {
        program: program.to_owned(),
        detail: format!("creating the iterator link: {e}"),
    })
}

/// One run of an iterator link in the calling thread's network namespace: the records its
/// program wrote (`bpf_seq_write` of whole `T`s).
///
/// `T` must be plain `#[repr(C)]` data valid for any bytes (the `lb_common` record types).
pub(crate) fn run<T: aya::Pod>(link: &OwnedFd) -> std::io::Result<Vec<T>> {
    let mut out = Vec::new();
    sys::iter_create(link.as_fd())?.read_to_end(&mut out)?;
    Ok(out
        .chunks_exact(size_of::<T>())
        .map(|chunk| {
            // SAFETY: `chunk` holds exactly one record as the program wrote it; `T` is `Pod`
            // (valid for any bytes), and the unaligned read copies it out.
            unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) }
        })
        .collect())
}

/// Runs `walk` in the calling thread's network namespace (named "the agent's network
/// namespace"), then in every other namespace whose handle is under `dirs` (each once, named by
/// its handle's path) on a thread of its own. Returns the number of namespaces walked and why
/// the others could not be entered.
pub(crate) fn each_namespace(
    dirs: &[PathBuf],
    mut walk: impl FnMut(&str) + Send,
) -> (usize, Vec<String>) {
    walk("the agent's network namespace");
    if dirs.is_empty() {
        return (1, Vec::new());
    }
    let namespaces = match other_namespaces(dirs) {
        Ok(n) => n,
        Err(e) => return (1, vec![e]),
    };
    let worker = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut walked = 1;
                let mut errors = Vec::new();
                for (path, fd) in &namespaces {
                    if let Err(e) = sys::enter_netns(fd.as_fd()) {
                        errors.push(format!(
                            "entering network namespace {}: {e}",
                            path.display()
                        ));
                        continue;
                    }
                    walk(&path.display().to_string());
                    walked += 1;
                }
                (walked, errors)
            })
            .join()
    });
    worker.unwrap_or_else(|_| (1, vec!["the namespace walk's thread panicked".to_owned()]))
}

/// The network namespace handles under `dirs`, once each, without the agent's own.
fn other_namespaces(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, fs::File)>, String> {
    let own = fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("reading this thread's network namespace: {e}"))?;
    let mut seen = BTreeSet::from([own]);
    let mut found = Vec::new();
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // A node without pods yet may have no such directory.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("listing {}: {e}", dir.display())),
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            // A namespace can go away between the listing and here: skip it.
            let Ok(file) = fs::File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if seen.insert((meta.dev(), meta.ino())) {
                found.push((path, file));
            }
        }
    }
    Ok(found)
}

/// Whether `path` looks like a directory of namespace handles (for a clear start-up error).
pub fn check_netns_dir(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
