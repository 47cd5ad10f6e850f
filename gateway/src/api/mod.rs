//! The HTTP API: one list of routes that yields both the router and the
//! OpenAPI document, so the two cannot disagree.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::App;
use crate::auth::{Keys, Revocations};
use crate::metrics::Metrics;

pub mod artifacts;
pub mod auth;
pub mod bundles;
pub mod clusters;
pub mod dispatches;
pub mod error;
pub mod extract;
pub mod health;
pub mod instances;
pub mod logs;
pub mod nodes;
pub mod schedules;
pub mod sessions;
pub(crate) mod views;

/// What every handler can reach. Cheap to clone: every request gets a copy.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    pub app: App,
    pub keys: Keys,
    pub revocations: Revocations,
    pub metrics: Arc<Metrics>,
    pub statuses: crate::background::Statuses,
    /// The served router, which node links run their requests through (see
    /// [`AppState::link_router`]).
    pub link_router: LinkRouter,
}

impl AppState {
    /// Shares `shared` with every handler.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// The router a node link runs its requests through: the one the server
    /// serves, shared by every link. Bound to the state per link, the routes
    /// cost ~85 KB a node (each route clones the state); built per link,
    /// with the OpenAPI document, ~2.3 MB.
    pub fn link_router(&self) -> Router {
        let served = self.link_router.0.lock().expect("link router lock").clone();
        served.unwrap_or_else(|| router(self.clone()))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Runhouse Gateway",
        description = "Records every dispatch (one remote call of a Python function) and serves its state.\n\n\
            Every `/v1` route needs `Authorization: Bearer <JWT>`; `rh-gateway token create` mints one. \
            Errors share one body: `{code, message, request_id, field?}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerScheme),
    components(schemas(wire::ErrorBody)),
    tags(
        (name = "dispatches", description = "Create, read, list, cancel and wait on dispatches."),
        (name = "bundles", description = "Content-addressed code bundles."),
        (name = "functions", description = "Named functions: an entrypoint, bundle, requirements and default cluster."),
        (name = "clusters", description = "Compute the gateway provisions: local processes, existing hosts, EC2, Compute Engine."),
        (name = "schedules", description = "Cron schedules that create dispatches, exactly once per instant across replicas."),
        (name = "instances", description = "Remote objects: a class constructed once on a node, its methods called as dispatches."),
        (name = "dashboard", description = "Signing in to the web dashboard under `/ui`."),
        (name = "nodes", description = "Routes node daemons and new machines call."),
        (name = "health", description = "Liveness, readiness and metrics; no token needed.")
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".into());
        http.description = Some(
            "A JWT with claims `sub`, `project`, `scopes` (`dispatch:read`, `dispatch:write`, `node`, `admin`), \
             `exp`, `iat`, `jti`, signed with the gateway's pinned algorithm (HS256 by default)."
                .into(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// Every route, with a node report's body limit (reports carry results).
fn api_routes(report_limit_bytes: usize) -> OpenApiRouter<AppState> {
    // The inner limit wins over the router-wide one set in `router`.
    let reports = OpenApiRouter::new()
        .routes(routes!(dispatches::dispatch_report))
        .layer(DefaultBodyLimit::max(report_limit_bytes));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dispatches::dispatch_create, dispatches::dispatch_list))
        .routes(routes!(dispatches::dispatch_get))
        .routes(routes!(dispatches::dispatch_cancel))
        .routes(routes!(dispatches::dispatch_events))
        .routes(routes!(dispatches::dispatch_wait))
        .routes(routes!(dispatches::dispatch_record))
        .routes(routes!(dispatches::dispatch_records_store))
        .routes(routes!(artifacts::dispatch_artifacts))
        .routes(routes!(artifacts::dispatch_artifact_get, artifacts::dispatch_artifact_put))
        .merge(reports)
        .routes(routes!(logs::dispatch_logs, logs::dispatch_logs_append))
        .routes(routes!(bundles::bundle_upload))
        .routes(routes!(bundles::bundle_download))
        .routes(routes!(bundles::function_register, bundles::function_list))
        .routes(routes!(bundles::function_get))
        .routes(routes!(clusters::cluster_create, clusters::cluster_list))
        .routes(routes!(clusters::cluster_get, clusters::cluster_delete))
        .routes(routes!(clusters::cluster_join_token))
        .routes(routes!(clusters::node_join))
        .routes(routes!(clusters::node_binary))
        .routes(routes!(schedules::schedule_create, schedules::schedule_list))
        .routes(routes!(schedules::schedule_get, schedules::schedule_update, schedules::schedule_delete))
        .routes(routes!(schedules::schedule_runs))
        .routes(routes!(instances::instance_create, instances::instance_list))
        .routes(routes!(instances::instance_get, instances::instance_delete))
        .routes(routes!(sessions::ui_login_link))
        .routes(routes!(nodes::node_register, nodes::node_list))
        .routes(routes!(nodes::node_heartbeat))
        .routes(routes!(nodes::node_link))
        .routes(routes!(health::background_tasks))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// The OpenAPI document, as committed in `openapi/gateway.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes(0).into_openapi()
}

/// The whole HTTP service: API routes, `/openapi.json`, `/docs` and middleware.
pub fn router(state: AppState) -> Router {
    routes(&state.app.settings, state.metrics.clone()).with_state(state)
}

/// The served router, kept for node links. It holds the state that holds
/// it, so whoever serves it releases it when serving ends
/// ([`LinkRouter::release`]); otherwise neither would ever be freed.
#[derive(Default)]
pub struct LinkRouter(std::sync::Mutex<Option<Router>>);

impl LinkRouter {
    /// Keeps `router` for node links.
    pub fn keep(&self, router: Router) {
        *self.0.lock().expect("link router lock") = Some(router);
    }

    /// Lets go of the kept router, breaking the cycle through the state.
    pub fn release(&self) {
        self.0.lock().expect("link router lock").take();
    }
}

/// The routes, documents and layers of [`router`], not yet bound to a state.
fn routes(settings: &crate::config::Settings, metrics: Arc<Metrics>) -> Router<AppState> {
    let body_limit_bytes = settings.http.body_limit_bytes;
    // A report carries a result of up to `results.max_bytes` (escaping can
    // double it) and the call's last output.
    let report_limit = body_limit_bytes.max(2 * settings.results.max_bytes + 4 * 1024 * 1024);
    let (routes, spec) = api_routes(report_limit).split_for_parts();
    routes
        .merge(crate::ui::router())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                    let request_id =
                        request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn(error::error_bodies)),
        )
}
