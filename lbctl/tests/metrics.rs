//! The metrics server over real HTTP on 127.0.0.1.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lbctl::metrics::{
    ConnectCounts, ErrorKind, Metrics, OPENMETRICS_CONTENT_TYPE, SourceCounts, serve,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// A plain HTTP/1.1 GET, so the test depends on no HTTP client library.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = value.trim().to_string(),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        content_type,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The value of the sample named exactly `sample` (name plus labels as printed).
fn sample(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_health_and_readiness_over_http() {
    let metrics = Arc::new(Metrics::new());
    let server = serve("127.0.0.1:0".parse().expect("addr"), metrics.clone())
        .await
        .expect("serve");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    // Kernel counters, read at scrape time.
    let rewritten = Arc::new(AtomicU64::new(10));
    let read = rewritten.clone();
    metrics.set_connect_counts(move || {
        Some(ConnectCounts {
            rewritten: read.load(Ordering::Relaxed),
            refused: 2,
            passed: 300,
        })
    });
    metrics.set_source_counts(|| {
        vec![
            SourceCounts {
                resource: "services".into(),
                events: 5,
                errors: 1,
            },
            SourceCounts {
                resource: "endpointslices".into(),
                events: 9,
                errors: 0,
            },
        ]
    });
    metrics.observe_sync(Duration::from_millis(100));
    metrics.observe_sync(Duration::from_millis(150));
    metrics.observe_event_latency(Duration::from_millis(3));
    metrics.set_programmed(3, 7);
    metrics.inc_error(ErrorKind::Apply);
    metrics.inc_error(ErrorKind::Apply);
    metrics.inc_error(ErrorKind::Capacity);

    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, OPENMETRICS_CONTENT_TYPE);
    let body = reply.body;
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    for (name, kind) in [
        ("lbctl_sync_duration_seconds", "histogram"),
        ("lbctl_event_to_datapath_seconds", "histogram"),
        ("lbctl_frontends_programmed", "gauge"),
        ("lbctl_backends_programmed", "gauge"),
        ("lbctl_connects", "counter"),
        ("lbctl_errors", "counter"),
        ("lbctl_source_events", "counter"),
        ("lbctl_source_errors", "counter"),
        ("lbctl_ready", "gauge"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "no {name} {kind}:\n{body}"
        );
    }
    assert_eq!(
        sample(&body, "lbctl_sync_duration_seconds_count"),
        Some(2.0)
    );
    let sum = sample(&body, "lbctl_sync_duration_seconds_sum").expect("sum");
    assert!((sum - 0.25).abs() < 1e-9, "{sum}");
    // Buckets are cumulative: 0.1 s is in le=0.128, both are in le=0.256.
    assert_eq!(
        sample(&body, r#"lbctl_sync_duration_seconds_bucket{le="0.064"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_sync_duration_seconds_bucket{le="0.128"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_sync_duration_seconds_bucket{le="0.256"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_sync_duration_seconds_bucket{le="+Inf"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "lbctl_event_to_datapath_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "lbctl_frontends_programmed"), Some(3.0));
    assert_eq!(sample(&body, "lbctl_backends_programmed"), Some(7.0));
    assert_eq!(
        sample(&body, r#"lbctl_connects_total{verdict="rewritten"}"#),
        Some(10.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_connects_total{verdict="refused"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_connects_total{verdict="passed"}"#),
        Some(300.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_errors_total{kind="apply"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_errors_total{kind="capacity"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_source_events_total{resource="services"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"lbctl_source_events_total{resource="endpointslices"}"#
        ),
        Some(9.0)
    );
    assert_eq!(
        sample(&body, r#"lbctl_source_errors_total{resource="services"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&body, "lbctl_ready"), Some(0.0));

    // Health is unconditional; readiness is not, and says why.
    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.starts_with("not ready:"), "{}", ready.body);
    assert!(ready.body.contains("source not synced"), "{}", ready.body);
    assert!(
        ready.body.contains("datapath not attached"),
        "{}",
        ready.body
    );

    let readiness = metrics.readiness();
    readiness.set_source(true, true, None);
    readiness.set_datapath_attached(true);
    readiness.set_last_apply(Err("map full".into()));
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body.trim(), "not ready: last apply failed: map full");

    readiness.set_last_apply(Ok(()));
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    // Scrapes read the counters anew; readiness shows in lbctl_ready.
    rewritten.store(42, Ordering::Relaxed);
    metrics.set_programmed(4, 9);
    let body = get(addr, "/metrics").await.body;
    assert_eq!(
        sample(&body, r#"lbctl_connects_total{verdict="rewritten"}"#),
        Some(42.0)
    );
    assert_eq!(sample(&body, "lbctl_frontends_programmed"), Some(4.0));
    assert_eq!(sample(&body, "lbctl_backends_programmed"), Some(9.0));
    assert_eq!(sample(&body, "lbctl_ready"), Some(1.0));

    // A source failure makes the agent unready again.
    readiness.set_source(true, false, Some("services: 500".into()));
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("source not connected: services: 500"),
        "{}",
        ready.body
    );

    assert_eq!(get(addr, "/nope").await.status, 404);

    server.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn unreadable_kernel_counters_omit_the_connect_metric() {
    let metrics = Metrics::new();
    let body = metrics.encode().expect("encode");
    assert!(!body.contains("lbctl_connects"), "{body}");
    metrics.set_connect_counts(|| None);
    let body = metrics.encode().expect("encode");
    assert!(!body.contains("lbctl_connects"), "{body}");
    assert_eq!(sample(&body, "lbctl_ready"), Some(0.0));
}

#[tokio::test]
async fn binding_a_busy_port_is_an_error() {
    let metrics = Arc::new(Metrics::new());
    let first = serve("127.0.0.1:0".parse().expect("addr"), metrics.clone())
        .await
        .expect("serve");
    let second = serve(first.local_addr(), metrics).await;
    assert!(second.is_err());
}
