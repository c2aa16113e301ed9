//! cgroup id -> cgroup path. A cgroup v2 id is the inode number of the cgroup's directory under
//! the cgroup2 mount (found from /proc/self/mountinfo), so the path is found by walking that
//! tree; the answers are cached, and a miss walks again (a cgroup made since the last walk).
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub struct CgroupNames {
    root: Option<PathBuf>,
    known: HashMap<u64, String>,
}

impl CgroupNames {
    /// Resolves under the cgroup2 mount of this host; without one, nothing resolves.
    pub fn new() -> Self {
        Self::with_root(crate::datapath::system::cgroup2_root().ok())
    }

    pub fn with_root(root: Option<PathBuf>) -> Self {
        Self {
            root,
            known: HashMap::new(),
        }
    }

    /// The path of cgroup `id` relative to the mount (`/` for the root, `/kubepods/...`), or
    /// `None` when it is gone (or was never under this mount).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        let root = self.root.clone()?;
        self.known.clear();
        walk(&root, &root, &mut self.known);
        self.known.get(&id).cloned()
    }
}

impl Default for CgroupNames {
    fn default() -> Self {
        Self::new()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    out.insert(meta.ino(), format!("/{}", rel.display()));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_to_paths_relative_to_the_root() {
        let root = std::env::temp_dir().join(format!("lbctl-cgroups-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/pod1")).unwrap();
        let id = std::fs::metadata(root.join("kubepods/pod1")).unwrap().ino();
        let root_id = std::fs::metadata(&root).unwrap().ino();
        let mut names = CgroupNames::with_root(Some(root.clone()));
        assert_eq!(names.path(id).as_deref(), Some("/kubepods/pod1"));
        assert_eq!(names.path(root_id).as_deref(), Some("/"));
        assert_eq!(names.path(u64::MAX), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
