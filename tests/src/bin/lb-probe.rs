//! A client for lbctl's tests and demo. It waits for a `go` line on stdin (so the parent can
//! move it into a cgroup first), then runs one command and prints one line per attempt:
//! `ok <backend name>` or `err <errno>`.
//!
//! ```text
//! lb-probe tcp ADDR COUNT     connect, read the backend's name, close
//! lb-probe udp ADDR COUNT     connected UDP: connect, send, receive the name
//! lb-probe loop ADDR          tcp attempts until stdin closes; a `mark` line on stdin is
//!                             echoed as `mark` between the attempts before and after it
//! lb-probe exec CMD ARGS...   run a command (e.g. curl or dig) inside the cgroup
//! lb-probe timed ADDR...      tcp attempts over the addresses in turn until stdin closes,
//!                             each line `START_NS END_NS ADDR ok NAME|err ERRNO`
//! lb-probe dgram|dgram-many|peer|serve ...
//!                             socket-semantics modes, see `testkit::sockets`
//! lb-probe http NAME NODE ADDR
//!                             an HTTP server on ADDR answering every request with
//!                             "This is the quote service running in pod NAME on node NODE";
//!                             prints `listening ADDR` once bound, serves until killed
//! ```
use std::{
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    process::{Command, ExitCode},
    sync::mpsc,
    thread,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn tcp_once(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.trim().to_owned())
}

fn udp_once(addr: SocketAddr) -> io::Result<String> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.connect(addr)?;
    socket.send(b"?")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

fn report(out: &mut impl Write, result: io::Result<String>) -> io::Result<()> {
    match result {
        Ok(name) => writeln!(out, "ok {name}"),
        Err(e) => writeln!(out, "err {}", e.raw_os_error().unwrap_or(-1)),
    }?;
    out.flush()
}

fn run(args: &[String]) -> Result<(), String> {
    let parse = |s: &String| s.parse::<SocketAddr>().map_err(|e| format!("{s}: {e}"));
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match args {
        [cmd, addr, count] if cmd == "tcp" || cmd == "udp" => {
            let addr = parse(addr)?;
            let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
            for _ in 0..count {
                let r = if cmd == "tcp" {
                    tcp_once(addr)
                } else {
                    udp_once(addr)
                };
                report(&mut out, r).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        [cmd, addr] if cmd == "loop" => {
            let addr = parse(addr)?;
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            loop {
                match rx.try_recv() {
                    Ok(line) if line == "mark" => {
                        writeln!(out, "mark").map_err(|e| e.to_string())?
                    }
                    Ok(_) | Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
                report(&mut out, tcp_once(addr)).map_err(|e| e.to_string())?;
            }
        }
        [cmd, program, rest @ ..] if cmd == "exec" => {
            Err(Command::new(program).args(rest).exec().to_string())
        }
        [cmd, addrs @ ..] if cmd == "timed" && !addrs.is_empty() => {
            let addrs = addrs.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
            timed_loop(&addrs, &mut out)
        }
        [cmd, name, node, addr] if cmd == "http" => serve_http(name, node, parse(addr)?, &mut out),
        [mode, rest @ ..] if testkit::sockets::MODES.contains(&mode.as_str()) => {
            testkit::sockets::run(mode, rest, &mut out)
        }
        _ => Err("usage: lb-probe tcp|udp ADDR COUNT | loop ADDR | exec CMD ARGS...".into()),
    }
}

/// The demo's quote pod: one thread per connection, any request gets the same 200 answer.
fn serve_http(
    name: &str,
    node: &str,
    addr: SocketAddr,
    out: &mut impl Write,
) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    writeln!(out, "listening {addr}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    let body = format!("This is the quote service running in pod {name} on node {node}\n");
    let response = std::sync::Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let response = response.clone();
        thread::spawn(move || {
            if testkit::backends::read_request_head(&mut conn, TIMEOUT).is_ok() {
                let _ = conn.write_all(response.as_bytes());
            }
        });
    }
    Ok(())
}

/// Wall-clock nanoseconds: comparable with the test process's clock.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// TCP attempts over `addrs` in turn until stdin closes, each printed as
/// `START_NS END_NS ADDR ok NAME` or `START_NS END_NS ADDR err ERRNO`.
fn timed_loop(addrs: &[SocketAddr], out: &mut impl Write) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let mut sink = String::new();
        while io::stdin().lock().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = tx.send(());
    });
    for addr in addrs.iter().cycle() {
        if rx.try_recv().is_ok() {
            return Ok(());
        }
        let start = now_ns();
        let result = tcp_once(*addr);
        let end = now_ns();
        match result {
            Ok(name) => writeln!(out, "{start} {end} {addr} ok {name}"),
            Err(e) => writeln!(
                out,
                "{start} {end} {addr} err {}",
                e.raw_os_error().unwrap_or(-1)
            ),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut go = String::new();
    if io::stdin().lock().read_line(&mut go).is_err() || go.trim() != "go" {
        eprintln!("lb-probe: expected `go` on stdin");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
