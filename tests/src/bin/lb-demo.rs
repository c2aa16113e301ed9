//! The demo behind `cargo xtask demo`: a scratch cgroup with lbctl's datapath attached, one
//! service with a backend and one without, and a real `curl` run inside the cgroup against each:
//! the first is answered by the backend, the second fails with `Connection refused`, as the
//! Kubernetes docs show for an `internalTrafficPolicy: Local` service with no local endpoint.
use std::{
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
};

use anyhow::{Context, Result};
use lbctl::{datapath::Desired, plan::Protocol};
use testkit::{backends::Backends, pins::Scratch};

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn step(&self, text: &str) {
        println!("\n{}", self.paint("1;34", &format!("==> {text}")));
    }
}

fn curl_inside(s: &Scratch, style: &Style, url: &str) -> Result<()> {
    println!(
        "{}",
        style.paint(
            "2",
            &format!("$ curl -sS --max-time 3 {url}    (from a process in the cgroup)")
        )
    );
    let mut child = Command::new(testkit::probe::probe_binary())
        .args(["exec", "curl", "-sS", "--max-time", "3", url])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting curl")?;
    s.cgroup.add(child.id())?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        writeln!(stdin, "go")?;
    }
    let status = child.wait()?;
    println!(
        "{}",
        style.paint(
            "2",
            &format!("(curl exit status: {})", status.code().unwrap_or(-1))
        )
    );
    Ok(())
}

fn main() -> Result<()> {
    let style = Style {
        color: std::io::stdout().is_terminal(),
    };
    style.step("Attaching lbctl's connect4/connect6 programs to a scratch cgroup");
    let mut s = Scratch::new("demo")?;
    println!(
        "cgroup:   {}\npins:     {}",
        s.cgroup.path().display(),
        s.pins.path().display()
    );

    let quote = Backends::http(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[(
            "quote-002",
            "This is the quote service running in pod quote-002 on node kind-worker\n".into(),
        )],
    )?;
    let quote_vip: SocketAddr = "10.96.0.10:80".parse()?;
    let local_vip: SocketAddr = "10.96.0.11:80".parse()?;
    let mut desired = Desired::default();
    desired.insert(quote_vip, Protocol::Tcp, quote.addrs());
    desired.insert(local_vip, Protocol::Tcp, vec![]);
    let report = s.datapath.apply(&desired)?;
    style.step("Programming two services");
    println!(
        "quote        {quote_vip} -> {} (quote-002)",
        quote.addr("quote-002")
    );
    println!("quote-local  {local_vip} -> no endpoint on this node: connects are refused");
    println!("({} map writes)", report.map_operations);

    style.step("A service with an endpoint: the connect is rewritten to the backend");
    curl_inside(&s, &style, &format!("http://{quote_vip}/"))?;
    style.step("internalTrafficPolicy: Local with no local endpoint: refused at connect()");
    curl_inside(&s, &style, &format!("http://{local_vip}/"))?;

    let c = s.datapath.counters()?;
    style.step("Kernel counters");
    println!(
        "rewritten {}  refused {}  passed through {}",
        c.rewritten, c.refused, c.passed
    );
    style.step("Cleaning up (programs detached, pins and cgroup removed)");
    Ok(())
}
