//! The signals a long-running node answers: Ctrl-C (SIGINT) and SIGTERM
//! stop it; SIGHUP asks it to re-read its config file (systemd's
//! `ExecReload`), where it used to kill it silently.

/// What a signal asks of a running node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Stop (SIGINT, SIGTERM).
    Stop,
    /// Re-read the config file (SIGHUP).
    Reload,
}

/// The signal handlers, installed once at start so a SIGHUP that comes
/// early is held, not fatal.
pub(crate) struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (within the runtime).
    pub(crate) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let terminate = async {
                match &mut self.terminate {
                    Some(term) => term.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hangup = async {
                match &mut self.hangup {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = terminate => Signal::Stop,
                _ = hangup => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
