//! The host facts the datapath needs: where cgroup v2 and bpffs are mounted.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::DatapathError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs lives by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mount points of a filesystem type, from `/proc/self/mountinfo` (`man 5 proc`): the mount
/// point is field 5; the type follows the ` - ` separator.
fn mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == fstype)
                .then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup v2 mount point of this host (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| DatapathError::io("reading /proc/self/mountinfo", e))?;
    mount_points(&mountinfo, "cgroup2")
        .into_iter()
        .next()
        .ok_or(DatapathError::NoCgroup2)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into the zeroed struct we pass; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_dir` is on a bpffs: mounts one at [`BPFFS_ROOT`] when none is there, then
/// creates `pin_dir` readable by root only.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        // Agents (or tests) starting together must not stack two mounts: the loser's pins
        // would vanish under the winner's mount. Serialize on a lock file and check again.
        let lock_path = Path::new("/run/lbctl-bpffs.lock");
        let lock = fs::File::create(lock_path)
            .map_err(|e| DatapathError::io(format!("creating {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| DatapathError::io(format!("locking {}", lock_path.display()), e))?;
        if !is_bpffs(root) {
            mount_bpffs(root)?;
        }
    }
    create_private_dir(pin_dir)?;
    if !is_bpffs(pin_dir) {
        return Err(DatapathError::NotBpffs(pin_dir.to_path_buf()));
    }
    Ok(())
}

fn mount_bpffs(target: &Path) -> Result<(), DatapathError> {
    fs::create_dir_all(target)
        .map_err(|e| DatapathError::io(format!("creating {}", target.display()), e))?;
    let src = c"bpffs";
    let fstype = c"bpf";
    let data = c"mode=0700";
    let tgt = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| DatapathError::NotBpffs(target.to_path_buf()))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::io(
            format!("mounting bpffs on {}", target.display()),
            io::Error::last_os_error(),
        ));
    }
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(())
}

/// Creates a directory (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DatapathError::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| DatapathError::io(format!("setting mode of {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/b\\040pf rw shared:12 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            mount_points(SAMPLE, "cgroup2"),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(
            mount_points(SAMPLE, "bpf"),
            vec![PathBuf::from("/sys/fs/b pf")]
        );
        assert!(mount_points(SAMPLE, "ext4").is_empty());
    }
}
