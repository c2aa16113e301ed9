//! The host facts the datapath needs: where cgroup v2 and bpffs are mounted, and whether the
//! cgroup the agent is told to attach to is one it may attach to.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{DatapathError, sys};

/// Where bpffs lives by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The id of the root cgroup of the cgroup v2 hierarchy (its directory's inode number).
pub const ROOT_CGROUP_ID: u64 = 1;

/// One line of `/proc/self/mountinfo` (`man 5 proc`), the fields lbctl reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the directory of the filesystem this mount shows (for cgroup2: the cgroup,
    /// relative to the reader's cgroup namespace; `/..` parts when it lies outside it).
    pub root: String,
    /// Field 5: where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (first field after ` - `).
    pub fstype: String,
}

/// Parses mountinfo text. Later lines are mounts made later (they hide earlier ones at the same
/// mount point).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut fields = pre.split_whitespace();
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(Mount {
                root: unescape(root),
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: post.split_whitespace().next()?.to_owned(),
            })
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

/// The visible mounts of a filesystem type: for each mount point the last (topmost) mount, in
/// the order their mount points first appear.
fn visible_mounts(mounts: &[Mount], fstype: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for m in mounts {
        if let Some(seen) = out.iter_mut().find(|s| s.mount_point == m.mount_point) {
            *seen = m.clone();
        } else if m.fstype == fstype {
            out.push(m.clone());
        }
    }
    out.retain(|m| m.fstype == fstype);
    out
}

fn read_mountinfo() -> Result<Vec<Mount>, DatapathError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| DatapathError::io("reading /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup v2 mount point of this host (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    visible_mounts(&read_mountinfo()?, "cgroup2")
        .into_iter()
        .next()
        .map(|m| m.mount_point)
        .ok_or(DatapathError::NoCgroup2)
}

/// The cgroup v2 path of this process relative to its cgroup namespace (`0::PATH` in
/// `/proc/self/cgroup`).
fn own_cgroup_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Where this process's own cgroup is visible, given its path `own` (relative to its cgroup
/// namespace) and the cgroup2 mounts: under a mount whose root contains it. A mount whose root
/// lies outside the namespace (`/..`) cannot be resolved and is skipped.
fn own_cgroup_candidates(own: &str, mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| !m.root.split('/').any(|c| c == ".."))
        .filter_map(|m| {
            let rel = Path::new(own).strip_prefix(&m.root).ok()?;
            Some(if rel.as_os_str().is_empty() {
                m.mount_point.clone()
            } else {
                m.mount_point.join(rel)
            })
        })
        .collect()
}

/// The cgroup the datapath attaches to, as checked by [`verify_attach_point`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachPoint {
    /// The directory given (`--cgroup`, or the cgroup2 mount point by default).
    pub path: PathBuf,
    /// The cgroup's id (its directory's inode number on cgroup2; what `bpf_get_current_cgroup_id`
    /// and `bpftool cgroup tree` show).
    pub cgroup_id: u64,
}

impl AttachPoint {
    /// Whether this is the root of the cgroup hierarchy (every process of the node).
    pub fn is_root(&self) -> bool {
        self.cgroup_id == ROOT_CGROUP_ID
    }
}

/// Checks that `cgroup` is a cgroup v2 directory that is not this process's own cgroup (nor
/// below it) unless this process runs in the root cgroup: in a container with a private cgroup
/// namespace, the cgroup2 filesystem the runtime mounts shows the container's own cgroup as its
/// root, and attaching there would serve the agent alone.
pub fn verify_attach_point(cgroup: &Path) -> Result<AttachPoint, DatapathError> {
    let meta = fs::metadata(cgroup)
        .map_err(|e| DatapathError::io(format!("opening cgroup {}", cgroup.display()), e))?;
    if !meta.is_dir() || !sys::is_cgroup2(cgroup) {
        return Err(DatapathError::NotCgroup2(cgroup.to_path_buf()));
    }
    let point = AttachPoint {
        path: cgroup.to_path_buf(),
        cgroup_id: meta.ino(),
    };
    let own_path = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| own_cgroup_path(&t));
    let mounts = visible_mounts(&read_mountinfo()?, "cgroup2");
    let own = own_path
        .map(|p| own_cgroup_candidates(&p, &mounts))
        .unwrap_or_default()
        .into_iter()
        .find_map(|dir| {
            let m = fs::metadata(&dir).ok()?;
            Some((dir, m.dev(), m.ino()))
        });
    let Some((own_dir, own_dev, own_ino)) = own else {
        return Ok(point);
    };
    if own_ino == ROOT_CGROUP_ID {
        // A process of the root cgroup sees the whole hierarchy: every target is deliberate.
        return Ok(point);
    }
    // Walk up from the target: meeting the agent's own cgroup means the target is it or lies
    // below it.
    let target = fs::canonicalize(cgroup)
        .map_err(|e| DatapathError::io(format!("resolving {}", cgroup.display()), e))?;
    let mut dir = Some(target.as_path());
    while let Some(d) = dir {
        if !sys::is_cgroup2(d) {
            break;
        }
        if let Ok(m) = fs::metadata(d)
            && m.dev() == own_dev
            && m.ino() == own_ino
        {
            return Err(DatapathError::OwnCgroup {
                cgroup: cgroup.to_path_buf(),
                own: own_dir,
            });
        }
        dir = d.parent();
    }
    Ok(point)
}

/// Makes sure `pin_dir` is on a bpffs: mounts one at [`BPFFS_ROOT`] when none is there, then
/// creates `pin_dir` readable by root only.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && !sys::is_bpffs(root) {
        // Agents (or tests) starting together must not stack two mounts: the loser's pins
        // would vanish under the winner's mount. Serialize on a lock file and check again.
        let lock_path = Path::new("/run/lbctl-bpffs.lock");
        let lock = fs::File::create(lock_path)
            .map_err(|e| DatapathError::io(format!("creating {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| DatapathError::io(format!("locking {}", lock_path.display()), e))?;
        if !sys::is_bpffs(root) {
            mount_bpffs(root)?;
        }
    }
    create_private_dir(pin_dir)?;
    if !sys::is_bpffs(pin_dir) {
        return Err(DatapathError::NotBpffs(pin_dir.to_path_buf()));
    }
    Ok(())
}

fn mount_bpffs(target: &Path) -> Result<(), DatapathError> {
    fs::create_dir_all(target)
        .map_err(|e| DatapathError::io(format!("creating {}", target.display()), e))?;
    match sys::mount_bpffs(target) {
        Ok(()) => {
            tracing::info!(path = %target.display(), "mounted bpffs");
            Ok(())
        }
        // In a container without CAP_SYS_ADMIN (or with a read-only /sys), mounting fails:
        // the host must provide the filesystem.
        Err(e) => Err(DatapathError::NoBpffs {
            path: target.to_path_buf(),
            source: e,
        }),
    }
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

    fn mount_points(text: &str, fstype: &str) -> Vec<PathBuf> {
        visible_mounts(&parse_mountinfo(text), fstype)
            .into_iter()
            .map(|m| m.mount_point)
            .collect()
    }

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

    #[test]
    fn a_later_mount_hides_an_earlier_one_at_the_same_point() {
        let text = format!(
            "{SAMPLE}50 32 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
             51 31 0:40 / /sys/fs/cgroup/unified rw - tmpfs tmpfs rw\n"
        );
        // The cgroup2 mount is hidden by a tmpfs: no cgroup2 is visible there any more.
        assert!(mount_points(&text, "cgroup2").is_empty());
        let text =
            format!("{SAMPLE}50 32 0:27 /pod /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
        let visible = visible_mounts(&parse_mountinfo(&text), "cgroup2");
        assert_eq!(visible.len(), 1);
        assert_eq!(visible[0].root, "/pod");
    }

    #[test]
    fn own_cgroup_is_found_under_mounts_that_contain_it() {
        let mounts = parse_mountinfo(
            "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
             2 0 0:1 /../../host /host/cgroup rw - cgroup2 cgroup2 rw\n\
             3 0 0:1 /kubepods /kp rw - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(
            own_cgroup_candidates("/", &mounts),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
        assert_eq!(
            own_cgroup_candidates("/kubepods/pod1/c1", &mounts),
            vec![
                PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1"),
                PathBuf::from("/kp/pod1/c1")
            ]
        );
        assert_eq!(
            own_cgroup_path("1:cpu:/\n0::/system.slice/x.service\n").as_deref(),
            Some("/system.slice/x.service")
        );
    }
}
