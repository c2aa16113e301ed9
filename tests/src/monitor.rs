//! `lbctl monitor` as a child process: started, waited for until the agent has switched the
//! events on, its JSON lines read with a deadline, killed on drop.
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::probe::sibling_binary;

pub struct MonitorProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl MonitorProcess {
    /// Starts `lbctl monitor --pin-dir PIN_DIR -o json ARGS` and waits (up to 10 s) until it
    /// reports that it is monitoring: from then on every decision reaches it.
    pub fn start<S: AsRef<OsStr>>(pin_dir: &Path, args: &[S]) -> Result<Self> {
        Self::start_with_output(pin_dir, "json", args)
    }

    /// As [`MonitorProcess::start`], with `-o FORMAT`.
    pub fn start_with_output<S: AsRef<OsStr>>(
        pin_dir: &Path,
        format: &str,
        args: &[S],
    ) -> Result<Self> {
        let mut child = Command::new(sibling_binary("lbctl"))
            .arg("monitor")
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(["-o", format])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lbctl monitor")?;
        let lines = forward_lines(child.stdout.take().context("monitor stdout")?);
        let stderr = forward_lines(child.stderr.take().context("monitor stderr")?);
        let monitor = Self {
            child,
            lines,
            stderr,
        };
        // The first thing it says: that it is monitoring, or why not.
        match monitor.stderr.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.starts_with("monitoring ") => Ok(monitor),
            Ok(line) => bail!("lbctl monitor: {line}"),
            Err(_) => bail!("lbctl monitor did not start within 10 s"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of output, or `None` when none came within `timeout` (or it exited).
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next event as JSON, or `None` when none came within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<serde_json::Value> {
        let line = self.next_line(timeout)?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("monitor printed {line:?}, not JSON: {e}")),
        )
    }

    /// Every event that arrives until none came for `quiet`.
    pub fn events_until_quiet(&self, quiet: Duration) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.next_event(quiet)).collect()
    }

    /// SIGKILL, as an operator's `kill -9` or a closed `kubectl exec` would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (e.g. after `--count`); its exit success.
    pub fn wait(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn forward_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `lb_meta[DEBUG]` of the datapath pinned at `pin_dir`: which monitor and debug switches the
/// programs see now.
pub fn switches(pin_dir: &Path) -> Result<u32> {
    let maps = lbctl::datapath::Maps::open_read_only(pin_dir)?;
    Ok(maps.meta.get(&lb_common::meta::DEBUG, 0)?)
}
