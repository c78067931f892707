//! `--metrics ADDR`: the read model as Prometheus metrics, served on
//! `/metrics` by a small HTTP/1 server on the agent's own runtime.
//!
//! The series and their labels are part of the interface (dashboards rely
//! on them): labels are bounded dimensions (comm, container, pod,
//! namespace, cause), never a pid, port, address or cookie; a label set
//! whose sockets all closed goes away; past [`MAX_LABEL_SETS`] the rest
//! are folded into one set whose labels all say `other`.

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{prometheus_text, text, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{sanitize, Output, StartInfo};
use crate::{
    model::{Group, Model},
    probe::Drops,
    tracking::DWELL_BUCKETS_S,
};

/// Label sets of the stuck-socket gauges, at most; the rest are `other`.
pub const MAX_LABEL_SETS: usize = 200;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 32;
/// A client gets this long to send its request headers, and this long in
/// all, so slow or silent clients cannot hold a slot.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gauges follow the model.
const REFRESH_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct StuckLabels {
    pub comm: String,
    pub container: String,
    pub pod: String,
    pub namespace: String,
    pub cause: String,
}

impl StuckLabels {
    fn other() -> StuckLabels {
        let other = || "other".to_string();
        StuckLabels {
            comm: other(),
            container: other(),
            pod: other(),
            namespace: other(),
            cause: other(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// What the stuck gauges say for one label set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stuck {
    pub sockets: i64,
    pub oldest_s: f64,
}

/// The stuck groups summed by label set, capped at [`MAX_LABEL_SETS`].
pub fn stuck_by_labels(model: &Model, now_ns: u64) -> BTreeMap<StuckLabels, Stuck> {
    let mut by: BTreeMap<StuckLabels, Stuck> = BTreeMap::new();
    for g in model.groups(now_ns) {
        let labels = labels_of(model, &g);
        let s = by.entry(labels).or_default();
        s.sockets += g.count as i64;
        s.oldest_s = s.oldest_s.max(g.oldest_dwell_ns as f64 / 1e9);
    }
    if by.len() > MAX_LABEL_SETS {
        // Keep the largest; fold the rest.
        let mut sets: Vec<(StuckLabels, Stuck)> = by.into_iter().collect();
        sets.sort_by(|a, b| b.1.sockets.cmp(&a.1.sockets).then(a.0.cmp(&b.0)));
        let rest = sets.split_off(MAX_LABEL_SETS - 1);
        by = sets.into_iter().collect();
        let other = by.entry(StuckLabels::other()).or_default();
        for (_, s) in rest {
            other.sockets += s.sockets;
            other.oldest_s = other.oldest_s.max(s.oldest_s);
        }
    }
    by
}

fn labels_of(model: &Model, g: &Group) -> StuckLabels {
    let owner = model.owner_of(&g.key);
    let text = |s: Option<&str>| {
        s.map(|s| sanitize::text(s).into_owned())
            .unwrap_or_default()
    };
    StuckLabels {
        comm: text(g.key.comm.as_deref()),
        container: text(owner.and_then(|o| o.container_id.as_deref())),
        pod: text(owner.and_then(|o| o.pod.as_deref())),
        namespace: text(owner.and_then(|o| o.pod_namespace.as_deref())),
        cause: g.cause.map_or("unknown", |c| c.name()).to_string(),
    }
}

/// The dwell histogram as the tracker keeps it (every closed socket with
/// an exact dwell), encoded as a Prometheus histogram.
#[derive(Debug, Default)]
struct DwellHistogram {
    /// Per bucket of [`DWELL_BUCKETS_S`] (not cumulative), sum, count.
    snapshot: Mutex<(Vec<u64>, f64, u64)>,
}

impl EncodeMetric for DwellHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let Ok(s) = self.snapshot.lock() else {
            return Ok(());
        };
        let (counts, sum, count) = &*s;
        let mut buckets: Vec<(f64, u64)> = DWELL_BUCKETS_S
            .iter()
            .copied()
            .zip(counts.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        // The OpenMetrics encoder adds no +Inf bucket of its own, and the
        // longest leaks are the ones above the last bound.
        let below: u64 = buckets.iter().map(|(_, n)| n).sum();
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The metrics, registered; shared with the HTTP server.
struct Series {
    registry: Registry,
    sockets: Gauge,
    stuck: Family<StuckLabels, Gauge>,
    oldest: Family<StuckLabels, Gauge<f64, AtomicU64>>,
    entered: Counter,
    closed: Counter,
    lost: Family<ReasonLabel, Counter>,
    dwell: Arc<DwellHistogram>,
}

impl Series {
    fn new() -> Series {
        let mut registry = Registry::with_prefix("closewait");
        let sockets = Gauge::default();
        registry.register(
            "sockets",
            "TCP sockets in CLOSE_WAIT now (all dwells, after the filters)",
            sockets.clone(),
        );
        let stuck = Family::<StuckLabels, Gauge>::default();
        registry.register(
            "stuck_sockets",
            "Sockets in CLOSE_WAIT past the threshold now",
            stuck.clone(),
        );
        let oldest = Family::<StuckLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "oldest_stuck_seconds",
            "Longest time a socket of this label set has been in CLOSE_WAIT",
            oldest.clone(),
        );
        let entered = Counter::default();
        registry.register(
            "entered",
            "Entries into CLOSE_WAIT (seen live, or recovered by reconciliation)",
            entered.clone(),
        );
        let closed = Counter::default();
        registry.register("closed", "Sockets that left CLOSE_WAIT", closed.clone());
        let dwell = Arc::new(DwellHistogram::default());
        registry.register(
            "dwell_seconds",
            "Time closed sockets spent in CLOSE_WAIT (exactly known dwells)",
            SharedDwell(dwell.clone()),
        );
        let lost = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "lost_events",
            "Kernel events lost, by reason (reconciliation recovers the sockets)",
            lost.clone(),
        );
        registry.register(
            "build",
            "closewait-trace's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Series {
            registry,
            sockets,
            stuck,
            oldest,
            entered,
            closed,
            lost,
            dwell,
        }
    }
}

/// The registry wants an owned metric; the histogram is filled elsewhere.
#[derive(Debug)]
struct SharedDwell(Arc<DwellHistogram>);

impl EncodeMetric for SharedDwell {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Parse `--metrics`: `HOST:PORT`, `[V6]:PORT`, or `:PORT` (loopback).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_string(),
    };
    full.parse().map_err(|_| {
        format!("`{s}` is not an address to serve metrics on (HOST:PORT, [IPv6]:PORT or :PORT)")
    })
}

/// The metrics output: follows the model once a second, and serves
/// `/metrics` from `listener`.
pub struct Metrics {
    series: Arc<Series>,
    next_ns: u64,
    shown: HashSet<StuckLabels>,
    entered: u64,
    closed: u64,
    lost: Drops,
}

impl Metrics {
    /// Bound already (the caller reports a bind error before attaching).
    pub fn serve(listener: std::net::TcpListener) -> std::io::Result<Metrics> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let series = Arc::new(Series::new());
        tokio::spawn(accept_loop(listener, series.clone()));
        Ok(Metrics {
            series,
            next_ns: 0,
            shown: HashSet::new(),
            entered: 0,
            closed: 0,
            lost: Drops::default(),
        })
    }

    fn refresh(&mut self, model: &Model, now_ns: u64) {
        let s = &self.series;
        let counts = model.counts();
        s.sockets.set(counts.in_close_wait as i64);
        let t = counts.totals;
        let entered = t.entered;
        s.entered.inc_by(entered.saturating_sub(self.entered));
        self.entered = self.entered.max(entered);
        s.closed.inc_by(t.closed.saturating_sub(self.closed));
        self.closed = self.closed.max(t.closed);
        let drops = *model.drops();
        let delta = drops.since(&self.lost);
        for (reason, n) in delta.by_reason() {
            s.lost.get_or_create(&ReasonLabel { reason }).inc_by(n);
        }
        self.lost = drops;
        if let Ok(mut d) = s.dwell.snapshot.lock() {
            let b = &counts.dwell_buckets;
            *d = (b.counts.clone(), b.sum_s, b.count);
        }
        // Set the current label sets, then drop those that emptied: a
        // scrape in between sees no gap.
        let now: BTreeMap<StuckLabels, Stuck> = stuck_by_labels(model, now_ns);
        for (labels, v) in &now {
            s.stuck.get_or_create(labels).set(v.sockets);
            s.oldest.get_or_create(labels).set(v.oldest_s);
        }
        for gone in self.shown.iter().filter(|l| !now.contains_key(*l)) {
            s.stuck.remove(gone);
            s.oldest.remove(gone);
        }
        self.shown = now.into_keys().collect();
    }
}

impl Output for Metrics {
    fn start(&mut self, _info: &StartInfo, _now_ns: u64) -> std::io::Result<()> {
        // Every lost-event reason from the start, at 0.
        for (reason, _) in Drops::default().by_reason() {
            let _ = self.series.lost.get_or_create(&ReasonLabel { reason });
        }
        Ok(())
    }

    fn summary(&mut self, model: &Model, _ran: Duration, now_ns: u64) -> std::io::Result<()> {
        self.refresh(model, now_ns);
        Ok(())
    }

    fn tick(&mut self, model: &Model, now_ns: u64) -> std::io::Result<bool> {
        if now_ns >= self.next_ns {
            self.next_ns = now_ns + REFRESH_NS;
            self.refresh(model, now_ns);
        }
        Ok(false)
    }

    fn is_live(&self) -> bool {
        true
    }
}

async fn accept_loop(listener: TcpListener, series: Arc<Series>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of descriptors, say: back off instead of spinning.
                eprintln!("closewait-trace: warning: metrics: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let series = series.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let series = series.clone();
                async move { Ok::<_, Infallible>(respond(&series, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn respond(series: &Series, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "closewait-trace serves /metrics only\n".into(),
        );
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        );
    }
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (kind, done) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text::encode(&mut body, &series.registry),
        )
    } else {
        (
            prometheus_text::CONTENT_TYPE,
            prometheus_text::encode(&mut body, &series.registry),
        )
    };
    match done {
        Ok(()) => reply(StatusCode::OK, kind, body),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "encoding failed\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::tests::{diagnosed, stuck, S};

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(
            parse_addr(":9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        for bad in ["9464", "localhost:9464", ":x", ""] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stuck_sockets_by_label_set_never_by_pid() {
        let mut m = Model::default();
        let api = Arc::new(diagnosed("api-server", 1));
        for id in 1..=3 {
            m.apply(&mut stuck(id, 5432, Some(api.clone())));
        }
        // Another peer of the same process and cause: same labels.
        m.apply(&mut stuck(4, 6000, Some(api.clone())));
        m.apply(&mut stuck(5, 7000, Some(Arc::new(diagnosed("worker", 0)))));
        let by = stuck_by_labels(&m, 130 * S);
        assert_eq!(by.len(), 2, "{by:?}");
        let api = by
            .iter()
            .find(|(l, _)| l.comm == "api-server")
            .map(|(l, s)| (l.cause.as_str(), s.sockets))
            .unwrap();
        assert_eq!(api, ("idle_closed_by_peer", 4));
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_other() {
        let mut m = Model::default();
        let mut id = 0;
        for n in 0..(MAX_LABEL_SETS + 10) {
            let ctx = Arc::new(diagnosed(&format!("proc-{n}"), 1));
            // proc-0 has 3 sockets, the others 1.
            for _ in 0..if n == 0 { 3 } else { 1 } {
                id += 1;
                m.apply(&mut stuck(id, 5432, Some(ctx.clone())));
            }
        }
        let by = stuck_by_labels(&m, 130 * S);
        assert_eq!(by.len(), MAX_LABEL_SETS);
        assert_eq!(by.values().map(|s| s.sockets).sum::<i64>(), id as i64);
        assert_eq!(by[&StuckLabels::other()].sockets, 11, "{by:?}");
        assert!(by.keys().any(|l| l.comm == "proc-0"), "the largest is kept");
    }

    #[test]
    fn encodes_prometheus_text_with_emptied_sets_gone() {
        let series = Arc::new(Series::new());
        let mut metrics = Metrics {
            series: series.clone(),
            next_ns: 0,
            shown: HashSet::new(),
            entered: 0,
            closed: 0,
            lost: Drops::default(),
        };
        let mut m = Model::default();
        m.apply(&mut stuck(
            1,
            5432,
            Some(Arc::new(diagnosed("evil\"\n", 1))),
        ));
        metrics.refresh(&m, 130 * S);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &series.registry).unwrap();
        assert!(
            out.contains("closewait_stuck_sockets{comm=\"evil\\\"\\\\x0a\",container=\"\",pod=\"\",namespace=\"\",cause=\"idle_closed_by_peer\"} 1"),
            "{out}"
        );
        assert!(out.contains("closewait_build_info{version=\""), "{out}");
        assert!(
            out.contains("# TYPE closewait_dwell_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains("closewait_dwell_seconds_bucket{le=\"0.001\"} 0"),
            "{out}"
        );
        assert!(out.contains("closewait_entered_total 0"), "{out}");
        // Its socket closes: the series goes.
        let mut m = Model::default();
        m.apply(&mut stuck(2, 6000, Some(Arc::new(diagnosed("worker", 0)))));
        metrics.refresh(&m, 131 * S);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &series.registry).unwrap();
        assert!(!out.contains("evil"), "{out}");
        assert!(out.contains("comm=\"worker\""), "{out}");
    }
}
