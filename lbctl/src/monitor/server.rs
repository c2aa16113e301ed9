//! The agent's side of `lbctl monitor`: the one reader of the events ring buffer, fanning the
//! events out to every monitor connected to its Unix socket.
//!
//! The switch that makes the programs write events (`lb_meta[DEBUG]` bit
//! [`meta::DEBUG_EVENTS`]) is on exactly while at least one monitor is connected: the agent sets
//! it when the first connects and clears it when the last one's socket closes, which the kernel
//! does for a monitor that exits in any way, SIGKILL included. So a monitor holds nothing that
//! could outlive it. An agent that starts clears a switch a killed predecessor left on.
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, MapInfo, RingBuf};
use lb_common::{EVENTS_MAP, META_MAP, MonitorEvent, meta};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    sync::broadcast,
    task::JoinHandle,
};

use super::{EVENT_LEN, Frame, RawEvent, bpflog};

/// Events a slow monitor may fall behind by before it is told it lost some.
const BACKLOG: usize = 8192;

/// The channel that fans events out to the monitors: made when the first monitor connects and
/// dropped when the last one leaves, so an agent nobody watches (the usual case) keeps no
/// backlog (its [`BACKLOG`] slots are about 1 MB).
#[derive(Default)]
struct Channel(Mutex<Option<broadcast::Sender<RawEvent>>>);

impl Channel {
    fn sender(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<RawEvent>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new monitor's receiver (the channel is made for the first one).
    fn subscribe(&self) -> broadcast::Receiver<RawEvent> {
        self.sender()
            .get_or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe()
    }

    /// Drops the channel once no monitor holds a receiver.
    fn release(&self) {
        let mut sender = self.sender();
        if sender.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            *sender = None;
        }
    }

    /// The sender while some monitor is connected.
    fn current(&self) -> Option<broadcast::Sender<RawEvent>> {
        self.sender().clone()
    }
}

/// The switches the agent owns, written together into `lb_meta[DEBUG]`.
struct Switches {
    pin_dir: PathBuf,
    debug_logs: bool,
    monitors: usize,
    /// Set when the server is dropped: monitors still winding down must not write the
    /// switches any more (a new server may own them).
    retired: bool,
}

impl Switches {
    fn word(&self) -> u32 {
        let mut word = 0;
        if self.debug_logs {
            word |= meta::DEBUG_LOGS;
        }
        if self.monitors > 0 {
            word |= meta::DEBUG_EVENTS;
        }
        word
    }

    /// Writes the switches into the pinned `lb_meta` (opened each time: it may have been
    /// recreated by a repair since the last write).
    fn write(&self) -> Result<()> {
        if self.retired {
            return Ok(());
        }
        write_switches(&self.pin_dir, self.word())
    }
}

/// Sets `lb_meta[DEBUG]` of the datapath pinned at `pin_dir`.
pub fn write_switches(pin_dir: &Path, word: u32) -> Result<()> {
    let path = pin_dir.join(META_MAP);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut array: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    array
        .set(meta::DEBUG, word, 0)
        .with_context(|| format!("setting the debug switches in {}", path.display()))
}

/// Serves monitors while it lives; dropping it clears the switches and removes the socket.
pub struct MonitorServer {
    switches: Arc<Mutex<Switches>>,
    socket: PathBuf,
    /// The events ring read, by path and map id: a datapath rebuilt (repair) or migrated to
    /// new maps pins another ring there.
    ring_path: PathBuf,
    ring_id: u32,
    tasks: Vec<JoinHandle<()>>,
}

impl MonitorServer {
    /// Starts serving `socket` for the datapath pinned at `pin_dir`; with `debug_logs`, also
    /// turns on the programs' debug logs and forwards them to tracing (target `lbctl::bpf`).
    pub fn start(pin_dir: &Path, socket: &Path, debug_logs: bool) -> Result<Self> {
        let switches = Arc::new(Mutex::new(Switches {
            pin_dir: pin_dir.to_path_buf(),
            debug_logs,
            monitors: 0,
            retired: false,
        }));
        let mut tasks = Vec::new();
        if debug_logs {
            // Before the switch: the log ring must have its reader when records come. Without
            // one (programs too old to have a log ring), the switch stays off.
            match bpflog::start(pin_dir) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "kernel debug logs stay off");
                    lock(&switches).debug_logs = false;
                }
            }
        }
        lock(&switches).write()?;

        let ring_path = pin_dir.join(EVENTS_MAP);
        let data = MapData::from_pin(&ring_path)
            .with_context(|| format!("opening the events ring buffer {}", ring_path.display()))?;
        let ring_id = data.info()?.id();
        let ring = RingBuf::try_from(Map::RingBuf(data))
            .with_context(|| format!("mapping {}", ring_path.display()))?;
        // SAFETY: the RingBuf owns its map descriptor for its whole life and as_raw_fd always
        // returns that descriptor.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(io::Error::from)
            .context("polling the events ring buffer")?;
        let channel = Arc::new(Channel::default());
        tasks.push(tokio::spawn(read_ring(ring, channel.clone())));

        let listener = bind(socket)?;
        tasks.push(tokio::spawn(accept(listener, channel, switches.clone())));
        tracing::info!(socket = %socket.display(), debug_bpf = debug_logs, "monitor socket ready");
        Ok(Self {
            switches,
            socket: socket.to_path_buf(),
            ring_path,
            ring_id,
            tasks,
        })
    }

    /// Whether the ring this server reads is still the one pinned (and so its switches are in
    /// the pinned `lb_meta`). `false` after a repair or a map migration: start a new server.
    pub fn is_current(&self) -> bool {
        MapInfo::from_pin(&self.ring_path).is_ok_and(|info| info.id() == self.ring_id)
    }

    /// Number of monitors connected now.
    pub fn monitors(&self) -> usize {
        lock(&self.switches).monitors
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut switches = lock(&self.switches);
        switches.retired = true;
        // Nobody reads the rings any more: the programs stop writing them.
        if let Err(e) = write_switches(&switches.pin_dir, 0) {
            tracing::warn!(error = %e, "clearing the monitor and debug switches");
        }
    }
}

fn lock(switches: &Mutex<Switches>) -> std::sync::MutexGuard<'_, Switches> {
    switches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates the socket's directory (root only), replaces a stale socket, and listens, mode 0600:
/// the events name every process's connections, so only root may read them.
fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode of {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("listening on monitor socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode of {}", socket.display()))?;
    Ok(listener)
}

/// Drains the ring when the programs wake the reader (they do once an eighth of it is unread)
/// and every [`POLL`]: most events are submitted without a wakeup, which would cost each
/// monitored connect a wakeup of this thread.
async fn read_ring(mut ring: AsyncFd<RingBuf<MapData>>, channel: Arc<Channel>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain(guard.get_inner_mut(), &channel);
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::error!(error = %e, "polling the events ring buffer failed; monitors get no more events");
                    return;
                }
            },
            _ = tick.tick() => drain(ring.get_mut(), &channel),
        }
    }
}

/// How often the agent reads the events ring without being woken.
const POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn drain(ring: &mut RingBuf<MapData>, channel: &Channel) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<MonitorEvent>() {
            let mut raw = [0u8; EVENT_LEN];
            raw.copy_from_slice(&item[..EVENT_LEN]);
            // Into the channel of the monitors connected now (looked up per event: a monitor
            // may join, and the channel be made anew, while the ring is drained). None
            // connected (the last one just left): dropped.
            if let Some(tx) = channel.current() {
                let _ = tx.send(raw);
            }
        }
    }
}

async fn accept(listener: UnixListener, channel: Arc<Channel>, switches: Arc<Mutex<Switches>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Subscribed before the switch goes on: no event of this monitor's time is lost.
                let rx = channel.subscribe();
                tokio::spawn(serve(stream, rx, channel.clone(), switches.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a monitor");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Changes the number of monitors by `delta` and writes the switches.
fn count_monitor(switches: &Mutex<Switches>, joined: bool) {
    let mut s = lock(switches);
    if joined {
        s.monitors += 1;
    } else {
        s.monitors = s.monitors.saturating_sub(1);
    }
    if let Err(e) = s.write() {
        tracing::warn!(error = %e, monitors = s.monitors, "writing the monitor switch");
    } else {
        tracing::info!(
            monitors = s.monitors,
            "monitor {}",
            if joined { "connected" } else { "left" }
        );
    }
}

async fn serve(
    stream: UnixStream,
    mut rx: broadcast::Receiver<RawEvent>,
    channel: Arc<Channel>,
    switches: Arc<Mutex<Switches>>,
) {
    count_monitor(&switches, true);
    let (mut read, mut write) = stream.into_split();
    // Tells the monitor the switch is on: what it prints from now on is complete.
    if write.write_all(&Frame::Ready.encode()).await.is_ok() {
        let mut scratch = [0u8; 64];
        loop {
            let frame = tokio::select! {
                // A monitor sends nothing: any end of its socket (exit, SIGKILL) ends here.
                r = read.read(&mut scratch) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                },
                event = rx.recv() => match event {
                    Ok(raw) => Frame::Event(raw),
                    Err(broadcast::error::RecvError::Lagged(n)) => Frame::Lost(n),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if write.write_all(&frame.encode()).await.is_err() {
                break;
            }
        }
    }
    drop(rx);
    channel.release();
    count_monitor(&switches, false);
}
