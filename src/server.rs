//! Running the registry: logging, the listener, background clean-up and a
//! graceful shutdown.

use std::net::SocketAddr;
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
    pub state: AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Opens storage, binds `config.listen` and starts serving in the background.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let state = AppState::open(config).await?;
        clean_up_at_start(&state).await?;
        let listener = TcpListener::bind(state.config.listen).await.with_context(|| {
            format!(
                "cannot listen on {}; is another registry running there? Choose another with --listen or KAI_LISTEN",
                state.config.listen
            )
        })?;
        let address = listener.local_addr()?;
        let (shutdown, mut signal) = tokio::sync::watch::channel(false);
        let router = app::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await
        });
        tokio::spawn(expire_uploads_periodically(
            state.clone(),
            shutdown.subscribe(),
        ));
        Ok(RunningServer {
            address,
            state,
            shutdown,
            task,
        })
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
    println!("listening on http://{}", server.address);
    tracing::info!(address = %server.address, data = %server.state.config.data.display(), "registry started");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    server.stop().await
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
