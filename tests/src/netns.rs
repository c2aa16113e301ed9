//! Scratch network namespaces.

use anyhow::Result;

use crate::topology::ip;

/// A named network namespace (`ip netns add`) with its loopback up, deleted on drop.
///
/// A process started in it with [`NetnsGuard::exec_prefix`] keeps its cgroup, so it can be
/// moved into a test cgroup as usual.
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let name = crate::unique_name(tag);
        ip(&["netns", "add", &name])?;
        let guard = Self { name };
        ip(&["-n", &guard.name, "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}
