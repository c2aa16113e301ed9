//! Kernel-side debug logs (aya-log) surfaced through tracing, target `lbctl::bpf`.
//!
//! The log ring buffer (`AYA_LOGS`) belongs to the loaded object, not to the pin directory, so
//! the agent finds it from the *attached* program: the pinned link of `lb_connect4` gives its
//! program id, and aya-log reads the ring of that program. This works the same whether this
//! agent loaded the programs or adopted those an earlier agent pinned.
use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::datapath::loader;

/// Forwards aya-log records to tracing.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let program = record.module_path().unwrap_or("lb_ebpf");
        let message = readable(&record.args().to_string());
        match record.level() {
            log::Level::Error => tracing::error!(target: "lbctl::bpf", program, "{message}"),
            log::Level::Warn => tracing::warn!(target: "lbctl::bpf", program, "{message}"),
            log::Level::Info => tracing::info!(target: "lbctl::bpf", program, "{message}"),
            log::Level::Debug => tracing::debug!(target: "lbctl::bpf", program, "{message}"),
            log::Level::Trace => tracing::trace!(target: "lbctl::bpf", program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The programs log `hook` and `reason` as numbers (strings would not fit their stack): shown
/// with the names `lbctl monitor` uses.
fn readable(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let named = |prefix: &str, name: fn(u8) -> &'static str| {
                word.strip_prefix(prefix)
                    .and_then(|n| n.parse::<u8>().ok())
                    .map(|n| format!("{prefix}{}", name(n)))
            };
            named("hook=", super::hook_name)
                .or_else(|| named("reason=", super::reason_name))
                .unwrap_or_else(|| word.to_owned())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The id of the program attached through the pinned link of `program`.
fn attached_program_id(pin_dir: &Path, program: &str) -> Result<u32> {
    let path = loader::link_path(pin_dir, program);
    let link = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening the pinned link {}", path.display()))?;
    let info = FdLink::from(link)
        .info()
        .with_context(|| format!("reading the link {}", path.display()))?;
    Ok(info.program_id())
}

/// Starts reading the debug log ring of the attached programs.
pub fn start(pin_dir: &Path) -> Result<JoinHandle<()>> {
    let id = attached_program_id(pin_dir, "lb_connect4")?;
    let logger = EbpfLogger::init_from_id_with_logger(id, ToTracing).with_context(|| {
        format!(
            "--debug-bpf: the attached programs (program id {id}) have no debug log ring; they \
             predate --debug-bpf: restart after `lbctl uninstall --pin-dir {}`",
            pin_dir.display()
        )
    })?;
    // SAFETY: the logger owns the ring buffer's map descriptor for its whole life and
    // as_raw_fd always returns that descriptor.
    let mut logger = unsafe { AsyncFd::register(logger) }
        .map_err(std::io::Error::from)
        .context("polling the debug log ring")?;
    tracing::info!(program_id = id, "kernel debug logs on (target lbctl::bpf)");
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match logger.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!(error = %e, "polling the debug log ring failed");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hook_and_reason_numbers_are_named() {
        assert_eq!(
            super::readable("refused hook=1 cookie=5 frontend=[::ffff:10.0.0.1]:80 reason=4"),
            "refused hook=connect4 cookie=5 frontend=[::ffff:10.0.0.1]:80 reason=no_backends"
        );
        assert_eq!(super::readable("hook=x reason="), "hook=x reason=");
    }
}
