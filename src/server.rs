//! Running the registry: logging, the listener, background clean-up and a
//! graceful shutdown.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::app::{self, AppState};
use crate::config::Config;

pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log.level).with_context(|| {
        format!(
            "log.level {:?} is not a valid filter (try \"info\" or \"kai=debug,info\")",
            config.log.level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// A registry serving on a bound listener, as `serve` runs it and tests use it.
pub struct RunningServer {
    pub address: SocketAddr,
    /// `https` when TLS is on (`tls.mode`), else `http`.
    pub scheme: &'static str,
    /// The plain-HTTP address that redirects to HTTPS (`tls.redirect_listen`).
    pub redirect_address: Option<SocketAddr>,
    /// The TLS state when TLS is on: the served certificate, reloads.
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub state: AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Opens storage, binds `config.listen` and starts serving in the background.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let state = AppState::open(config).await?;
        clean_up_at_start(&state).await?;
        crate::http::auth::bootstrap(&state).await?;
        let tls = crate::tls::Tls::from_config(&state.config)?.map(Arc::new);
        let listener = TcpListener::bind(state.config.listen).await.with_context(|| {
            format!(
                "cannot listen on {}; is another registry running there? Choose another with --listen or KAI_LISTEN",
                state.config.listen
            )
        })?;
        let address = listener.local_addr()?;
        let (shutdown, signal) = tokio::sync::watch::channel(false);
        let router = app::router(state.clone());
        let mut redirect_address = None;
        let task = match &tls {
            None => tokio::spawn(
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped(signal))
                .into_future(),
            ),
            Some(tls) => {
                let redirect = match state.config.tls.redirect_listen {
                    Some(redirect_listen) => {
                        let redirect = TcpListener::bind(redirect_listen).await.with_context(|| {
                            format!(
                                "cannot listen on {redirect_listen} for the HTTP-to-HTTPS redirect; \
                                 choose another with --http-redirect or tls.redirect_listen"
                            )
                        })?;
                        redirect_address = Some(redirect.local_addr()?);
                        Some(tokio::spawn(
                            axum::serve(redirect, crate::tls::redirect_router(address.port()))
                                .with_graceful_shutdown(stopped(shutdown.subscribe()))
                                .into_future(),
                        ))
                    }
                    None => None,
                };
                // tap_io: a listener axum gives the peer address of (ConnectInfo).
                let listener = axum::serve::ListenerExt::tap_io(
                    tls.listen(listener, shutdown.subscribe())?,
                    |_| {},
                );
                tokio::spawn(tls.clone().maintain(shutdown.subscribe()));
                tokio::spawn(async move {
                    let served = axum::serve(
                        listener,
                        router.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(stopped(signal))
                    .await;
                    if let Some(redirect) = redirect {
                        redirect.await.map_err(std::io::Error::other)??;
                    }
                    served
                })
            }
        };
        tokio::spawn(expire_uploads_periodically(
            state.clone(),
            shutdown.subscribe(),
        ));
        Ok(RunningServer {
            address,
            scheme: if tls.is_some() { "https" } else { "http" },
            redirect_address,
            tls,
            state,
            shutdown,
            task,
        })
    }

    /// `scheme://address`, e.g. `https://127.0.0.1:5000`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// Stops accepting connections, lets in-flight requests finish, and closes
    /// the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task failed")??;
        self.state.meta.close().await;
        Ok(())
    }
}

/// `kai serve`: run until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = RunningServer::start(config).await?;
    println!("listening on {}", server.url());
    if let Some(redirect) = server.redirect_address {
        tracing::info!(address = %redirect, "redirecting plain HTTP to HTTPS");
    }
    if server.state.config.tls.mode == crate::config::TlsMode::Auto {
        let ca = crate::tls::ca_certificate_path(&server.state.config.data);
        let hostname = server
            .state
            .config
            .tls
            .hostname
            .as_deref()
            .unwrap_or("HOST");
        tracing::info!(
            ca = %ca.display(),
            "clients trust this registry after `kai setup docker --host {hostname}:{port}` \
             (or podman, system, buildx); `kai ca export` prints the CA",
            port = server.address.port()
        );
    }
    tracing::info!(address = %server.address, data = %server.state.config.data.display(), "registry started");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    server.stop().await
}

/// Resolves once `signal` turns true (or its sender is gone).
async fn stopped(mut signal: tokio::sync::watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Staged upload data with no session row is left from a crash (rows are
/// created before data and removed after it), so it is removed at start.
async fn clean_up_at_start(state: &AppState) -> anyhow::Result<()> {
    let mut removed = 0;
    for upload in state.blobs.list_uploads().await? {
        if state.meta.upload(upload.as_str()).await?.is_none() {
            state.blobs.cancel_upload(&upload).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed staged data of interrupted uploads");
    }
    expire_uploads(state).await?;
    Ok(())
}

/// Removes upload sessions not written to within `uploads.expire_after`.
async fn expire_uploads(state: &AppState) -> anyhow::Result<usize> {
    let expire_after =
        i64::try_from(state.config.uploads.expire_after.as_secs()).unwrap_or(i64::MAX);
    let before = kai_meta::unix_now().saturating_sub(expire_after);
    let stale = state.meta.stale_uploads(before).await?;
    for id in &stale {
        if let Ok(upload) = id.parse::<kai_storage::UploadId>() {
            let _guard = state.upload_locks.lock(&upload).await;
            state.blobs.cancel_upload(&upload).await?;
        }
        state.meta.delete_upload(id).await?;
    }
    if !stale.is_empty() {
        tracing::info!(expired = stale.len(), "removed expired upload sessions");
    }
    Ok(stale.len())
}

async fn expire_uploads_periodically(
    state: AppState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let interval = state
        .config
        .uploads
        .cleanup_interval
        .max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(error) = expire_uploads(&state).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "upload clean-up failed; will retry"
            );
        }
    }
}
