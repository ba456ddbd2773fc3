//! SIGINT (ctrl-c) and SIGTERM, the signals that stop `run` (in `mod.rs`), and SIGHUP, which
//! asks it to re-read the configuration.
//!
//! Owns the handlers only; must never stop anything itself: `run` decides what a signal does.

/// SIGINT and SIGTERM, listened for from the moment they are installed.
pub(super) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
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
            // Installed from the start: SIGHUP's default action would end the process.
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            ctrl_c,
        }
    }

    /// Until SIGINT or SIGTERM.
    pub(super) async fn stop(&mut self) {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            tokio::select! {
                _ = &mut self.ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = (&mut self.ctrl_c).await;
    }

    /// The SIGHUP stream, to wait on beside [`Signals::stop`].
    pub(super) fn take_hangup(&mut self) -> Hangup {
        Hangup {
            #[cfg(unix)]
            hup: self.hup.take(),
        }
    }
}

/// SIGHUP, taken out of [`Signals`].
pub(super) struct Hangup {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Until the next SIGHUP (never, where there is none).
    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(hup) = &mut self.hup {
            hup.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}
