//! `lbctl agent` as a child process, stopped (SIGKILL) on drop, with its log kept in a file.
use std::{
    ffi::OsStr,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::probe::sibling_binary;

pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `lbctl agent ARGS`, logging to a temporary file.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// Starts `lbctl agent ARGS` with these environment variables set too.
    pub fn start_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> Result<Self> {
        // Found (or the test fails naming what to build) before the log file exists.
        let binary = sibling_binary("lbctl");
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("agent")));
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let spawned = file.try_clone().and_then(|stdout| {
            Command::new(binary)
                .arg("agent")
                .args(args)
                .envs(env.iter().copied())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(file)
                .spawn()
        });
        match spawned {
            Ok(child) => Ok(Self { child, log }),
            Err(e) => {
                let _ = fs::remove_file(&log);
                Err(e).context("starting lbctl agent")
            }
        }
    }

    /// The file the agent logs to.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (up to 5 s) for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- agent log ({}) ---\n{}", self.log.display(), self.log());
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// Polls `check` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
