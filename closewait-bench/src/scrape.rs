//! closewait-trace's metrics endpoint, read by the soak and the benchmark:
//! one HTTP/1.0 GET and the sums of the series they follow.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// The series the soak and the benchmark follow, from one scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Metrics {
    pub sockets: f64,
    pub stuck: f64,
    /// `closewait_stuck_sockets` of processes named `churn`: the soak's leakers.
    pub stuck_churn: f64,
    pub lost: f64,
}

impl Metrics {
    /// Reads the Prometheus text format: the sums of each series over its labels.
    pub fn parse(text: &str) -> Self {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "closewait_sockets" => m.sockets += value,
                "closewait_stuck_sockets" => {
                    m.stuck += value;
                    if series.contains("comm=\"churn\"") {
                        m.stuck_churn += value;
                    }
                }
                "closewait_lost_events_total" => m.lost += value,
                _ => {}
            }
        }
        m
    }
}

/// A minimal HTTP/1.0 GET: the body of a 200 reply.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!("{status}");
    }
    Ok(body.to_owned())
}

/// A free loopback port for the metrics endpoint.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let text = "# HELP closewait_sockets x\n\
            closewait_sockets 100002\n\
            closewait_stuck_sockets{comm=\"churn\",cause=\"eof_not_closed\"} 70000\n\
            closewait_stuck_sockets{comm=\"a b\",cause=\"unknown\"} 30000\n\
            closewait_lost_events_total{reason=\"ringbuf_full\"} 12\n\
            closewait_lost_events_total{reason=\"recursion\"} 0\n\
            closewait_dwell_seconds_bucket{le=\"+Inf\"} 5\n";
        let m = Metrics::parse(text);
        assert_eq!((m.sockets, m.stuck, m.lost), (100002.0, 100000.0, 12.0));
        assert_eq!(m.stuck_churn, 70000.0);
    }
}
