//! SIGINT (ctrl-c) and SIGTERM, the signals that stop `run` (in `mod.rs`).
//!
//! Owns the handlers only; must never stop anything itself: `run` decides what a signal does.

/// SIGINT and SIGTERM, listened for from the moment they are installed.
pub(super) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    ctrl_c: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>,
}

impl Signals {
    pub(super) fn install() -> Signals {
        let mut ctrl_c: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            Box::pin(tokio::signal::ctrl_c());
        // Polling once registers the SIGINT handler now rather than at the first await.
        let waker = std::task::Waker::noop();
        let _ = ctrl_c
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
            ctrl_c,
        }
    }

    pub(super) async fn wait(self) {
        #[cfg(unix)]
        if let Some(mut term) = self.term {
            tokio::select! {
                _ = self.ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = self.ctrl_c.await;
    }
}
