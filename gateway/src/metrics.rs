//! Prometheus metrics: request latency histograms, and dispatch counts by state
//! read from the database at scrape time (so every replica reports the truth).

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::dispatch::DispatchState;

/// Every label value comes from a closed set: a known method or `other`, a
/// route template of this API or `unmatched`, a status code. No request can
/// add a series, so an unauthenticated client cannot grow `/metrics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The label for a request method.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The gateway's metrics registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    dispatches: Family<StateLabels, Gauge>,
    bundles: Gauge,
    watched: Gauge,
    links: Gauge,
    link_messages: Family<DirectionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rh");
        let requests = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let dispatches = Family::<StateLabels, Gauge>::default();
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            requests.clone(),
        );
        registry.register("dispatches", "Dispatches by state", dispatches.clone());
        let bundles = Gauge::default();
        registry.register("bundles", "Stored code bundles", bundles.clone());
        let watched = Gauge::default();
        registry.register(
            "dispatches_watched",
            "Dispatches this replica has parked long-polls or live log followers for",
            watched.clone(),
        );
        let links = Gauge::default();
        registry.register("node_links", "Node links open to this replica", links.clone());
        let link_messages = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "node_link_messages",
            "Messages carried over node links: `to_nodes` counts requests this replica sent, \
             `from_nodes` every message nodes sent",
            link_messages.clone(),
        );
        Metrics { registry: Mutex::new(registry), requests, dispatches, bundles, watched, links, link_messages }
    }
}

impl Metrics {
    /// Renders the text exposition, with `counts` as the current dispatches by
    /// state, `bundles` as the number of stored bundles and `watched` as the
    /// dispatches waited on here, and `links` as this replica's node links.
    pub fn render(
        &self,
        counts: &[(DispatchState, i64)],
        bundles: i64,
        watched: i64,
        links: &crate::node_link::Links,
    ) -> String {
        use std::sync::atomic::Ordering;
        self.bundles.set(bundles);
        self.watched.set(watched);
        self.links.set(links.count() as i64);
        for (direction, total) in [("to_nodes", &links.sent), ("from_nodes", &links.received)] {
            // Mirrors the links' own tally, which is the source of truth.
            self.link_messages
                .get_or_create(&DirectionLabels { direction })
                .inner()
                .store(total.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for state in DispatchState::ALL {
            let count = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.dispatches.get_or_create(&StateLabels { state: state.to_string() }).set(count);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry.lock().expect("metrics lock poisoned"))
            .expect("writing to a String cannot fail");
        text
    }
}

/// Middleware recording each request's latency.
pub async fn track(State(metrics): State<std::sync::Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // `MatchedPath` is one of the router's own templates (`/v1/dispatches/{id}`).
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    debug_assert!(labels.status < 600);
    metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}
