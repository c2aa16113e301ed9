//! The metrics server over real HTTP on 127.0.0.1, and how each metric is computed (with fake
//! providers in place of the kernel's counters; tests/tests/agent.rs scrapes a real agent).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use lbctl::metrics::{
    ConnectCounts, ErrorKind, FrontendCounts, Metrics, NamedFrontend, OPENMETRICS_CONTENT_TYPE,
    ServicePort, SourceCounts, TrafficPolicy, serve,
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

    // Health follows the loop (it just started); readiness says why it is not ready.
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

/// The error kinds the docs list (the table under "### Error kinds" in docs/agent.md), in order.
fn documented_error_kinds() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent.md");
    let doc = std::fs::read_to_string(&path).expect("docs/agent.md");
    let table = doc
        .split("### Error kinds")
        .nth(1)
        .expect("docs/agent.md has a '### Error kinds' section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.split('|').nth(1)?.trim();
            Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_error_kind_is_served_from_the_start_and_documented() {
    let labels: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(
        documented_error_kinds(),
        labels,
        "docs/agent.md's error kinds differ from ErrorKind::ALL"
    );
    let metrics = Metrics::new();
    let body = metrics.encode().expect("encode");
    let served: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("lbctl_errors_total{kind=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut expected = labels.clone();
    expected.sort_unstable();
    let mut served_sorted = served.clone();
    served_sorted.sort_unstable();
    assert_eq!(served_sorted, expected, "{body}");
    for kind in ErrorKind::ALL {
        let series = format!("lbctl_errors_total{{kind=\"{}\"}}", kind.label());
        assert_eq!(sample(&body, &series), Some(0.0), "{series}");
    }
    metrics.inc_error(ErrorKind::PinsRemoved);
    let body = metrics.encode().expect("encode");
    assert_eq!(
        sample(&body, r#"lbctl_errors_total{kind="pins_removed"}"#),
        Some(1.0)
    );
}

fn port(namespace: &str, service: &str, port_name: &str) -> ServicePort {
    ServicePort {
        namespace: namespace.into(),
        service: service.into(),
        port_name: port_name.into(),
    }
}

fn named(id: u32, service: &ServicePort) -> NamedFrontend {
    NamedFrontend {
        id,
        service: service.clone(),
    }
}

fn service_sample(body: &str, p: &ServicePort, verdict: &str) -> Option<f64> {
    sample(
        body,
        &format!(
            "lbctl_service_connects_total{{namespace=\"{}\",service=\"{}\",port_name=\"{}\",verdict=\"{verdict}\"}}",
            p.namespace, p.service, p.port_name
        ),
    )
}

/// Fake kernel per-frontend counters: id -> (rewritten, refused).
type Kernel = Arc<Mutex<BTreeMap<u32, (u64, u64)>>>;

fn fake_kernel(metrics: &Metrics) -> Kernel {
    let kernel: Kernel = Arc::default();
    let read = kernel.clone();
    metrics.set_frontend_counts(move |ids| {
        let k = read.lock().expect("lock");
        Some(
            ids.iter()
                .map(|id| {
                    let (rewritten, refused) = k.get(id).copied().unwrap_or_default();
                    FrontendCounts { rewritten, refused }
                })
                .collect(),
        )
    });
    kernel
}

#[test]
fn service_counters_follow_frontend_ids_to_their_service_ports() {
    let metrics = Metrics::new();
    let kernel = fake_kernel(&metrics);
    let web = port("shop", "web", "http");
    let dns = port("kube-system", "dns", "dns");
    // Id 7 held counts of an earlier frontend: they belong to no current Service.
    kernel.lock().unwrap().insert(7, (100, 100));
    metrics.set_service_frontends(vec![named(1, &web), named(2, &web), named(7, &dns)]);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(0.0));
    assert_eq!(service_sample(&body, &dns, "refused"), Some(0.0));

    {
        let mut k = kernel.lock().unwrap();
        k.insert(1, (5, 0));
        k.insert(2, (3, 1));
        k.insert(7, (102, 104));
    }
    let body = metrics.encode().unwrap();
    // Both frontends of the Service port add up into one series.
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(8.0));
    assert_eq!(service_sample(&body, &web, "refused"), Some(1.0));
    assert_eq!(service_sample(&body, &dns, "rewritten"), Some(2.0));
    assert_eq!(service_sample(&body, &dns, "refused"), Some(4.0));

    // The dns Service goes away; id 7 is given to a new frontend of web: web counts only what
    // comes after, and dns's series is dropped (cardinality follows the programmed Services).
    {
        let mut k = kernel.lock().unwrap();
        k.insert(7, (110, 104)); // 8 more dns connects before the apply
    }
    metrics.set_service_frontends(vec![named(1, &web), named(2, &web), named(7, &web)]);
    kernel.lock().unwrap().insert(7, (111, 104));
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &dns, "rewritten"), None, "{body}");
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(9.0));

    // Maps recreated (counters back to zero): what is counted since adds on; nothing goes down.
    {
        let mut k = kernel.lock().unwrap();
        k.insert(1, (2, 0));
    }
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(11.0));
}

/// A Service port whose only frontend moves to another id keeps what it counted (its series
/// is not dropped and re-created in between), in a full set and in a patch alike.
#[test]
fn a_service_port_whose_frontend_changes_id_keeps_its_counts() {
    let metrics = Metrics::new();
    let kernel = fake_kernel(&metrics);
    let web = port("shop", "web", "http");
    metrics.set_service_frontends(vec![named(1, &web)]);
    kernel.lock().unwrap().insert(1, (5, 2));
    // The frontend is re-created under id 2 (id 2 starts from its current kernel values).
    kernel.lock().unwrap().insert(2, (40, 40));
    metrics.set_service_frontends(vec![named(2, &web)]);
    kernel.lock().unwrap().insert(2, (41, 40));
    let body = metrics.encode().unwrap();
    assert_eq!(
        service_sample(&body, &web, "rewritten"),
        Some(6.0),
        "{body}"
    );
    assert_eq!(service_sample(&body, &web, "refused"), Some(2.0), "{body}");

    kernel.lock().unwrap().insert(3, (0, 0));
    metrics.patch_service_frontends(&[2], vec![named(3, &web)]);
    kernel.lock().unwrap().insert(3, (1, 0));
    let body = metrics.encode().unwrap();
    assert_eq!(
        service_sample(&body, &web, "rewritten"),
        Some(7.0),
        "{body}"
    );
}

/// The incremental sync's form: only the ids that changed are named, with the same
/// accounting as a full `set_service_frontends`.
#[test]
fn patching_some_frontend_ids_accounts_like_setting_them_all() {
    let metrics = Metrics::new();
    let kernel = fake_kernel(&metrics);
    let web = port("shop", "web", "http");
    let dns = port("kube-system", "dns", "dns");
    metrics.set_service_frontends(vec![named(1, &web), named(7, &dns)]);
    {
        let mut k = kernel.lock().unwrap();
        k.insert(1, (5, 0));
        k.insert(7, (2, 1));
    }
    // Unchanged ids named again change nothing.
    metrics.patch_service_frontends(&[], vec![named(1, &web)]);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(5.0));
    assert_eq!(service_sample(&body, &dns, "refused"), Some(1.0));

    // dns goes away and id 7 comes back for web: dns's counts before the patch are kept
    // until its series goes, web counts only what comes after.
    kernel.lock().unwrap().insert(7, (4, 1));
    metrics.patch_service_frontends(&[7], vec![named(7, &web)]);
    kernel.lock().unwrap().insert(7, (6, 1));
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &dns, "rewritten"), None, "{body}");
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(7.0));

    // A removed id whose port still has another frontend keeps the port's series.
    metrics.patch_service_frontends(&[7], vec![]);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(7.0));
    metrics.patch_service_frontends(&[1], vec![]);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), None, "{body}");
}

#[test]
fn unreadable_frontend_counters_count_an_error_and_keep_the_totals() {
    let metrics = Metrics::new();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = Arc::new(AtomicU64::new(4));
    let (failing, current) = (fail.clone(), value.clone());
    metrics.set_frontend_counts(move |ids| {
        (!failing.load(Ordering::Relaxed)).then(|| {
            ids.iter()
                .map(|_| FrontendCounts {
                    rewritten: current.load(Ordering::Relaxed),
                    refused: 0,
                })
                .collect()
        })
    });
    let web = port("default", "web", "");
    metrics.set_service_frontends(vec![named(1, &web)]);
    value.store(9, Ordering::Relaxed);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(5.0));
    fail.store(true, Ordering::Relaxed);
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(5.0));
    // The collector runs after the registry's own metrics: a failed read shows in the next
    // scrape's error count.
    let body = metrics.encode().unwrap();
    assert_eq!(service_sample(&body, &web, "rewritten"), Some(5.0));
    assert_eq!(
        sample(&body, r#"lbctl_errors_total{kind="read_counters"}"#),
        Some(1.0)
    );
}

#[test]
fn refusing_skipped_last_sync_and_build_info() {
    let metrics = Metrics::new();
    let body = metrics.encode().unwrap();
    for policy in TrafficPolicy::ALL {
        let series = format!(
            "lbctl_frontends_refusing{{traffic_policy=\"{}\"}}",
            policy.label()
        );
        assert_eq!(sample(&body, &series), Some(0.0), "{body}");
    }
    assert_eq!(
        sample(&body, "lbctl_last_sync_timestamp_seconds"),
        Some(0.0)
    );
    metrics.set_refusing(&[(TrafficPolicy::Local, 3)].into_iter().collect());
    metrics.set_skipped(2);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_500);
    metrics.set_last_sync(at);
    let body = metrics.encode().unwrap();
    assert_eq!(
        sample(&body, r#"lbctl_frontends_refusing{traffic_policy="Local"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"lbctl_frontends_refusing{traffic_policy="Cluster"}"#
        ),
        Some(0.0)
    );
    assert_eq!(sample(&body, "lbctl_skipped_objects"), Some(2.0));
    assert_eq!(
        sample(&body, "lbctl_last_sync_timestamp_seconds"),
        Some(1_764_000_000.5)
    );
    let info = body
        .lines()
        .find(|l| l.starts_with("lbctl_build_info{"))
        .unwrap_or_else(|| panic!("no build info:\n{body}"));
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    let object = info
        .split("object_sha256=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("object_sha256 label");
    match lbctl::datapath::object_identity() {
        Some(sha) => {
            assert_eq!(object, sha);
            assert_eq!(sha.len(), 64);
            assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        None => assert_eq!(object, "none"),
    }
}

#[test]
fn programming_duration_uses_kube_proxys_buckets() {
    let metrics = Metrics::new();
    let trigger = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    metrics.observe_programming(trigger, trigger + Duration::from_millis(1_200));
    metrics.observe_programming(trigger, trigger + Duration::from_secs(70));
    // A trigger time ahead of the node's clock counts as 0, not as a negative latency.
    metrics.observe_programming(trigger + Duration::from_secs(5), trigger);
    let body = metrics.encode().unwrap();
    let les: Vec<f64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("lbctl_network_programming_duration_seconds_bucket{le=\""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|le| *le != "+Inf")
        .map(|le| le.parse().expect("le"))
        .collect();
    let mut expected = vec![0.25, 0.5];
    expected.extend((1..=59).map(f64::from));
    expected.extend((60..=115).step_by(5).map(f64::from));
    expected.extend((120..=300).step_by(30).map(f64::from));
    assert_eq!(les, expected);
    let bucket = |le: &str| {
        sample(
            &body,
            &format!("lbctl_network_programming_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("0.25"), Some(1.0));
    assert_eq!(bucket("1.0"), Some(1.0));
    assert_eq!(bucket("2.0"), Some(2.0));
    assert_eq!(bucket("65.0"), Some(2.0));
    assert_eq!(bucket("70.0"), Some(3.0));
    assert_eq!(
        sample(&body, "lbctl_network_programming_duration_seconds_count"),
        Some(3.0)
    );
}

#[tokio::test]
async fn healthz_fails_when_the_loop_stops_turning() {
    let metrics = Arc::new(Metrics::new());
    let server = serve("127.0.0.1:0".parse().expect("addr"), metrics.clone())
        .await
        .expect("serve");
    let addr = server.local_addr();
    let liveness = metrics.liveness();
    liveness.set_threshold(Duration::from_secs(5));
    liveness.beat();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    // The last turn was 10 s ago: stuck.
    liveness.beat_at(Instant::now() - Duration::from_secs(10));
    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 503);
    assert!(
        health
            .body
            .starts_with("stuck: the reconcile loop has not completed a turn for"),
        "{}",
        health.body
    );
    assert!(health.body.contains("threshold 5 s"), "{}", health.body);
    // Metrics are still served: a stuck loop is not a dead process.
    assert_eq!(get(addr, "/metrics").await.status, 200);
    liveness.beat();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.shutdown().await;
}

#[test]
fn a_sync_that_changes_no_frontend_reads_no_counter() {
    let metrics = Metrics::new();
    let reads = Arc::new(AtomicU64::new(0));
    let counted = reads.clone();
    metrics.set_frontend_counts(move |ids| {
        counted.fetch_add(ids.len() as u64, Ordering::Relaxed);
        Some(vec![FrontendCounts::default(); ids.len()])
    });
    let web = port("default", "web", "http");
    let frontends = vec![named(1, &web), named(2, &web)];
    metrics.set_service_frontends(frontends.clone());
    assert_eq!(
        reads.load(Ordering::Relaxed),
        2,
        "the new frontends are baselined"
    );
    metrics.set_service_frontends(frontends);
    assert_eq!(
        reads.load(Ordering::Relaxed),
        2,
        "nothing changed, nothing read"
    );
    metrics.set_service_frontends(vec![named(1, &web)]);
    assert_eq!(
        reads.load(Ordering::Relaxed),
        3,
        "only the leaving id is read"
    );
}
