//! The operator's Prometheus metrics (reconciles by result, failures by reason, durations,
//! certificate expiry) and its `/metrics` + `/healthz` endpoint.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

pub struct OperatorMetrics {
    pub reconciles: Family<Labels, Counter>,
    pub failures: Family<Labels, Counter>,
    pub duration: Family<Labels, Histogram>,
    pub certificate_expiry: Family<Labels, Gauge>,
    /// Bans across replicas: pod updates and failed calls, by result.
    pub ban_sync: Family<Labels, Counter>,
    registry: Registry,
}

impl OperatorMetrics {
    /// Records one reconcile of `kind`: its duration, and its result (`failure` with the
    /// reason when there is one).
    pub fn observe(&self, kind: &str, took: std::time::Duration, failure: Option<&str>) {
        let kind = ("kind", kind.to_string());
        self.duration
            .get_or_create(&vec![kind.clone()])
            .observe(took.as_secs_f64());
        let outcome = if failure.is_some() {
            "failure"
        } else {
            "success"
        };
        self.reconciles
            .get_or_create(&vec![kind, ("result", outcome.to_string())])
            .inc();
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&vec![("reason", reason.to_string())])
                .inc();
        }
    }

    /// The certificate-expiry series of one server.
    pub fn certificate_labels(namespace: &str, server: &str) -> Labels {
        vec![
            ("namespace", namespace.to_string()),
            ("server", server.to_string()),
        ]
    }

    pub fn new() -> Arc<OperatorMetrics> {
        let reconciles = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        let certificate_expiry = Family::<Labels, Gauge>::default();
        let ban_sync = Family::<Labels, Counter>::default();
        let mut registry = Registry::with_prefix("sluice_operator");
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            duration.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of each server's certificate (Unix seconds)",
            certificate_expiry.clone(),
        );
        registry.register(
            "ban_sync",
            "Bans across replicas: pods updated (updated), pods not answering (unreachable), calls refused by a pod (refused), rounds failed at the API (error)",
            ban_sync.clone(),
        );
        Arc::new(OperatorMetrics {
            reconciles,
            failures,
            duration,
            certificate_expiry,
            ban_sync,
            registry,
        })
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<OperatorMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move {
                let (status, body) = match request.uri().path() {
                    "/metrics" => (StatusCode::OK, metrics.render()),
                    "/healthz" | "/readyz" => (StatusCode::OK, "ok\n".to_string()),
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
