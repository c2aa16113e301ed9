//! The parent side of `lb-probe`: start it, move it into a cgroup, then let it run.
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::cgroup::CgroupGuard;

/// What one connect (or datagram exchange) of the probe ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the backend with this name.
    Reached(String),
    /// Failed with this errno.
    Failed(i32),
    /// The `mark` line the test sent was seen here (loop mode).
    Mark,
}

impl Outcome {
    fn parse(line: &str) -> Result<Self> {
        let mut words = line.split_whitespace();
        Ok(match (words.next(), words.next()) {
            (Some("ok"), Some(name)) => Outcome::Reached(name.to_owned()),
            (Some("err"), Some(errno)) => Outcome::Failed(errno.parse().context("errno")?),
            (Some("mark"), None) => Outcome::Mark,
            _ => bail!("unexpected probe output {line:?}"),
        })
    }
}

/// Path of a workspace binary (`lb-probe`, `lbctl`): next to the running executable or one
/// directory up (test binaries live in `target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "{name} not found next to {}; build the workspace (`cargo build --workspace`)",
        exe.display()
    );
}

/// Path of the `lb-probe` binary.
pub fn probe_binary() -> PathBuf {
    sibling_binary("lb-probe")
}

/// A running probe.
pub struct Probe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    /// Starts `lb-probe ARGS` inside `cgroup` (or where the test runs when `None`). The probe
    /// waits for a `go` line, so it does nothing before it is in the cgroup.
    pub fn spawn(cgroup: Option<&CgroupGuard>, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(probe_binary());
        cmd.args(args);
        Self::start(cmd, cgroup).context("starting lb-probe")
    }

    /// Starts `cmd` (which runs lb-probe in place), moves it into `cgroup`, then lets it go.
    fn start(mut cmd: Command, cgroup: Option<&CgroupGuard>) -> Result<Self> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        if let Some(cgroup) = cgroup {
            cgroup.add(child.id())?;
        }
        let mut stdin = child.stdin.take().context("probe stdin")?;
        writeln!(stdin, "go")?;
        let stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout,
        })
    }

    /// Runs the probe to completion and returns its outcomes.
    pub fn run(cgroup: Option<&CgroupGuard>, args: &[&str]) -> Result<Vec<Outcome>> {
        let mut probe = Self::spawn(cgroup, args)?;
        probe.finish()
    }

    /// The probe's process id (what `lbctl monitor` reports as `pid`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a line to the probe (loop mode: `mark`).
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("probe stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Reads outcomes until the probe has printed `n` of them.
    pub fn read(&mut self, n: usize) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(n);
        let mut line = String::new();
        while out.len() < n {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("probe exited after {} outcomes", out.len());
            }
            out.push(Outcome::parse(&line)?);
        }
        Ok(out)
    }

    /// Closes stdin (a loop probe stops), waits, and returns every outcome not read yet.
    pub fn finish(&mut self) -> Result<Vec<Outcome>> {
        self.stdin.take();
        let mut out = Vec::new();
        for line in (&mut self.stdout).lines() {
            out.push(Outcome::parse(&line?)?);
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("lb-probe failed: {status}");
        }
        Ok(out)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Probes started through a wrapper (a network namespace) and read line by line (the
/// socket-semantics modes of [`crate::sockets`], `exec`).
impl Probe {
    /// As [`Probe::spawn`], but runs `PREFIX... lb-probe ARGS`, e.g. with
    /// [`crate::netns::NetnsGuard::exec_prefix`]. The wrapper must exec the probe in place (as
    /// `ip netns exec` does), so the pid moved into `cgroup` is the probe's.
    pub fn spawn_via(prefix: &[&str], cgroup: Option<&CgroupGuard>, args: &[&str]) -> Result<Self> {
        let Some((program, wrapper_args)) = prefix.split_first() else {
            return Self::spawn(cgroup, args);
        };
        let mut cmd = Command::new(program);
        cmd.args(wrapper_args).arg(probe_binary()).args(args);
        Self::start(cmd, cgroup).with_context(|| format!("starting lb-probe through {program}"))
    }

    /// Reads `n` lines as they are.
    pub fn read_lines(&mut self, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(n);
        let mut line = String::new();
        while out.len() < n {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("probe exited after {} lines", out.len());
            }
            out.push(line.trim_end().to_owned());
        }
        Ok(out)
    }

    /// Closes stdin, waits, and returns the exit status and everything not read yet (for
    /// `exec`: the command's whole output).
    pub fn finish_raw(&mut self) -> Result<(std::process::ExitStatus, String)> {
        use std::io::Read as _;
        self.stdin.take();
        let mut text = String::new();
        self.stdout.read_to_string(&mut text)?;
        Ok((self.child.wait()?, text))
    }
}
