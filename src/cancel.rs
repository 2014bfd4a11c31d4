//! A small cancellation token (a `tokio::sync::watch` underneath) that tells
//! long-running tasks (the daemon's loops, a backend's sync task, the masq
//! resync) to stop. Shared ground: any layer may take a [`CancelToken`].

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct CancelToken(watch::Receiver<bool>);

#[derive(Debug)]
pub struct CancelSource(watch::Sender<bool>);

pub fn cancel_pair() -> (CancelSource, CancelToken) {
    let (tx, rx) = watch::channel(false);
    (CancelSource(tx), CancelToken(rx))
}

impl CancelSource {
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

impl CancelToken {
    /// Resolves once cancelled (immediately if already).
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}
