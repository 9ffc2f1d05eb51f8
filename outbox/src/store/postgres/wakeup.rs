//! Wake-ups from `LISTEN outbox_messages`, kept alive across dropped connections.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The channel the insert trigger notifies.
pub(crate) const CHANNEL: &str = "outbox_messages";

/// Spawns the listener task; `wake` is notified on every notification and after every reconnect
/// (notifications sent while the connection was down are lost, so the relay must look).
pub(crate) fn spawn(
    pool: PgPool,
    name: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        stop.run_until_cancelled(listen_forever(pool, name, wake))
            .await;
    })
}

async fn listen_forever(pool: PgPool, name: String, wake: Arc<Notify>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match listen(&pool, &name, &wake).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(%error, "outbox listener failed; the relay polls until it is back");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
        wake.notify_one();
    }
}

/// Listens until the connection is lost (`Ok`) or cannot be established (`Err`).
async fn listen(pool: &PgPool, name: &str, wake: &Notify) -> sqlx::Result<()> {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(&format!("{name}-listener"));
    let pool = sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Anything committed before LISTEN took effect sent its notification to nobody.
    wake.notify_one();
    while listener.try_recv().await?.is_some() {
        wake.notify_one();
    }
    Ok(())
}
