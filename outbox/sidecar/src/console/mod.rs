//! The web console, served by `outbox-relay run` on its HTTP listener under `/console`:
//! server-rendered pages (no JavaScript framework, no CDN, works offline) over the outbox
//! tables, the failure table, broker-lite's admin API and a message's whole trace.
//!
//! | page | what |
//! |---|---|
//! | `/console` | backlog, oldest due age, publish rate, per-topic counts, relay instances and their partitions, the broker circuit |
//! | `/console/failures` | the failure table: filter, view one message, replay or purge a selection or everything matching |
//! | `/console/broker` | broker-lite topics, groups, lag per queue, dead letters with redrive |
//! | `/console/trace` | one message's timeline by id or key: outbox, failure, broker, consumer |
//! | `/console/audit` | the audit log: who did what, newest first, by actor and action |
//! | `/console/jobs/{id}` | the progress of a long replay, purge or redrive, then its result |
//!
//! On a loopback listener reads are open (like `/metrics`); on any other address they need a
//! sign-in too. Writes always need the console token, unless the listener is on loopback and no
//! token is configured (see [`auth`]).

mod actions;
mod audit;
mod audit_page;
mod auth;
mod broker;
mod failures;
mod form;
mod html;
mod jobs;
mod overview;
mod redrive;
mod session;
mod standalone;
mod trace;
mod trace_records;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use broker_lite_client::{Admin, AdminConfig};
use courier_outbox::{CircuitState, RelayState};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::{BrokerKind, Config};
use crate::database::{Database, with_pool};
pub(crate) use standalone::serve_only;

/// Everything the pages read from.
pub(crate) struct Console {
    database: Database,
    /// broker-lite's addresses and admin settings; `None` for NATS or RabbitMQ.
    broker: Option<(String, AdminConfig)>,
    relay_name: String,
    /// The relay's state and broker circuit; `None` in console-only mode (`outbox-relay
    /// console`), where the relay runs in the application's own process.
    relay: Option<(watch::Receiver<RelayState>, watch::Receiver<CircuitState>)>,
    metrics: PrometheusHandle,
    auth: auth::Auth,
    /// Background replays and purges, with their progress.
    jobs: jobs::Jobs,
    /// The latest audited actions, for the overview (the audit table keeps them all).
    recent: audit::Recent,
    /// Set once the audit table's recent sign-outs are read (see [`Console::read_sign_outs`]).
    sign_outs: tokio::sync::OnceCell<()>,
    /// Reading them failed once already (logged).
    sign_outs_failed: AtomicBool,
    /// The last sample of the published counter, for the publish rate.
    rate: Mutex<overview::RateSample>,
}

impl Console {
    /// The console of a running relay (`relay`: its state and circuit), or of an outbox whose
    /// relay runs elsewhere (`None`). `loopback`: the listener is on a loopback address.
    pub(crate) fn new(
        config: &Config,
        database: Database,
        relay: Option<(watch::Receiver<RelayState>, watch::Receiver<CircuitState>)>,
        metrics: PrometheusHandle,
        loopback: bool,
    ) -> anyhow::Result<Self> {
        let broker = if config.broker_kind() == BrokerKind::BrokerLite {
            let mut admin = AdminConfig::default();
            admin.security = config.broker_lite_security()?;
            admin.request_timeout = config.send_timeout().max(std::time::Duration::from_secs(3));
            Some((config.broker.addresses.clone(), admin))
        } else {
            None
        };
        Ok(Self {
            database,
            broker,
            relay_name: config.relay.name.clone(),
            relay,
            metrics,
            auth: auth::Auth::new(config.console_token()?, loopback),
            jobs: jobs::Jobs::default(),
            recent: audit::Recent::default(),
            sign_outs: tokio::sync::OnceCell::new(),
            sign_outs_failed: AtomicBool::new(false),
            rate: Mutex::new(overview::RateSample::at_start()),
        })
    }

    /// A write request's operator and form fields, or the refusal page (see
    /// [`auth::Auth::authorize_write`]).
    fn write_form(
        &self,
        headers: &HeaderMap,
        body: &str,
    ) -> Result<(String, form::Fields), Box<Response>> {
        let who = self.auth.authorize_write(headers)?;
        Ok((who, form::Fields::parse(body)))
    }

    /// Reads the sign-outs of the last session lifetime from the audit table into the sessions,
    /// once: a restarted console must not take back a cookie signed out before. Until it has
    /// read them (the database is down, or not migrated to the audit table) only the bearer
    /// token signs in; the error says why, and is logged once.
    async fn read_sign_outs(&self) -> Result<(), String> {
        let read = self
            .sign_outs
            .get_or_try_init(|| async {
                let since = chrono::Utc::now()
                    - chrono::TimeDelta::seconds(session::LIFETIME.as_secs() as i64);
                let sign_outs =
                    with_pool!(&self.database, |pool| audit::since(pool, "sign-out", since)
                        .await)?;
                self.auth.read_sign_outs(&sign_outs);
                Ok::<(), sqlx::Error>(())
            })
            .await;
        read.map(|_| ()).map_err(|error| {
            let what = format!(
                "cannot read the sign-outs from the console's audit table ({error}): sign-in is \
                 refused until it can, the bearer token still works. If the table is missing, \
                 run `outbox-relay migrate`"
            );
            if !self.sign_outs_failed.swap(true, Ordering::Relaxed) {
                tracing::error!("{what}");
            }
            what
        })
    }

    /// An admin connection to broker-lite, or a message saying why there is none.
    async fn admin(&self) -> Result<Admin, String> {
        let Some((addresses, config)) = &self.broker else {
            return Err(
                "the broker is not broker-lite: its topics, groups and traces are in its own \
                 tools (nats CLI, RabbitMQ management UI)"
                    .to_owned(),
            );
        };
        Admin::connect(addresses.as_str(), config.clone())
            .await
            .map_err(|e| format!("cannot reach broker-lite at {addresses}: {e}"))
    }
}

/// The console's routes, to merge into the sidecar's HTTP router.
pub(crate) fn router(console: Arc<Console>) -> Router {
    let pages = Router::new()
        .route("/console", get(overview::page))
        .route("/console/failures", get(failures::list))
        .route("/console/failures/message", get(failures::show))
        .route("/console/failures/confirm", post(failures::confirm))
        .route("/console/failures/apply", post(failures::apply))
        .route("/console/jobs/{id}", get(jobs::page))
        .route("/console/broker", get(broker::page))
        .route("/console/broker/redrive", post(redrive::redrive))
        .route("/console/trace", get(trace::page))
        .route("/console/audit", get(audit_page::page))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            sign_in_to_read,
        ));
    Router::new()
        .route(
            "/console/login",
            get(|| async { auth::login_page(None) }).post(login),
        )
        .route("/console/logout", post(logout))
        .merge(pages)
        .with_state(console)
}

async fn logout(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    let _ = console.read_sign_outs().await;
    let (response, entry) = console.auth.logout(&headers);
    if let Some(entry) = entry {
        console.audit(entry).await;
    }
    response
}

/// Off loopback, every page but the login form needs a sign-in (see [`auth`]).
async fn sign_in_to_read(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A failure is logged; cookies are then refused, and the bearer token still works.
    let _ = console.read_sign_outs().await;
    if console.auth.may_read(request.headers()) {
        next.run(request).await
    } else {
        auth::unauthorized()
    }
}

async fn login(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    // A cookie would be refused anyway: say why instead of signing in to nothing.
    if let Err(what) = console.read_sign_outs().await {
        return html::error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            &what,
        );
    }
    let (response, entry) = console.auth.login(&headers, &body);
    if let Some(entry) = entry {
        console.audit(entry).await;
    }
    response
}
