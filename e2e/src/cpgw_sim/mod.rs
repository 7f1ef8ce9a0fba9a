//! A faithful-enough imitation of IBKR's Client Portal Gateway (CPGW) for
//! tests and the demo: HTTPS with a self-signed certificate, base path
//! `/v1/api`, and session behaviour that tests can switch at run time.
//!
//! There is deliberately no login endpoint: the real login is a browser flow
//! with 2FA that the product must never automate, so the simulator offers
//! nothing the product could learn to script.

mod routes;
mod state;
mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, net::TcpStream, task::JoinHandle, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use state::{AuthState, IsPaperShape, LoggedRequest, SimAccount, SimCounters};
use state::{SharedState, SimState};

/// A client that stalls its TLS handshake must not pin a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long graceful shutdown waits for in-flight requests before aborting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (for example out of file descriptors) so
/// the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How to start a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Session state at start.
    pub auth_state: AuthState,
    /// The account the session sees.
    pub account: SimAccount,
}

impl Default for SimConfig {
    /// `127.0.0.1:0`, logged in, paper account `DU1234567`.
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_state: AuthState::LoggedIn,
            account: SimAccount::paper(),
        }
    }
}

/// A running simulator. Dropping it stops the server without waiting; call
/// [`CpgwSimulator::shutdown`] to stop gracefully.
pub struct CpgwSimulator {
    local_addr: SocketAddr,
    certificate_der: Vec<u8>,
    state: SharedState,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl CpgwSimulator {
    /// Generates a fresh certificate, binds `config.listen` and starts
    /// serving. Returns once the listener is bound, so the address is
    /// immediately connectable.
    pub async fn start(config: SimConfig) -> std::io::Result<CpgwSimulator> {
        let sim_tls = tls::generate()?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let state = SharedState::new(SimState::new(config.auth_state, config.account));
        let app = routes::router(state.clone());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::clone(&sim_tls.server_config)),
            app,
            shutdown.clone(),
        ));
        Ok(CpgwSimulator {
            local_addr,
            certificate_der: sim_tls.certificate_der,
            state,
            shutdown,
            server: Some(server),
        })
    }

    /// Base URL of the API, e.g. `https://127.0.0.1:5000/v1/api`.
    pub fn base_url(&self) -> String {
        format!("https://{}/v1/api", self.local_addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// DER of the self-signed server certificate, for clients that pin it.
    pub fn certificate_der(&self) -> Vec<u8> {
        self.certificate_der.clone()
    }

    /// Switches the session state; takes effect for the next request.
    pub fn set_auth_state(&self, state: AuthState) {
        self.state.lock().auth_state = state;
    }

    /// The current session state (changed by `ssodh/init` as well).
    pub fn auth_state(&self) -> AuthState {
        self.state.lock().auth_state
    }

    /// Makes `ssodh/init` answer HTTP 500 `{"error":"no bridge"}` while true.
    pub fn set_ssodh_init_fails(&self, fail: bool) {
        self.state.lock().ssodh_init_fails = fail;
    }

    /// Replaces the account the session sees (e.g. a live `U...` account or
    /// another `isPaper` shape).
    pub fn set_account(&self, account: SimAccount) {
        self.state.lock().account = account;
    }

    /// Every request received so far, in arrival order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state.lock().request_log.clone()
    }

    /// Forgets the requests logged so far (counters are kept).
    pub fn clear_request_log(&self) {
        self.state.lock().request_log.clear();
    }

    /// Call counters of the session endpoints.
    pub fn counts(&self) -> SimCounters {
        self.state.lock().counters
    }

    /// Value of the `x-sess-uuid` cookie the simulator sets, so tests can
    /// assert it never appears in anything the product emits.
    pub fn session_cookie_value(&self) -> String {
        self.state.lock().cookie_value.clone()
    }

    /// The `sessionId` reported by `/iserver/accounts`, for the same kind of
    /// leak assertions.
    pub fn session_id(&self) -> String {
        self.state.lock().session_id.clone()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by a
    /// timeout) and closes idle connections.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            tracing::warn!(%error, "cpgw simulator task ended abnormally");
        }
    }
}

impl Drop for CpgwSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        acceptor.clone(),
                        app.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "cpgw simulator accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    // Without nodelay, hyper's separate header and body writes meet Nagle and
    // delayed ACK and every response stalls ~40 ms on loopback.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    let tls_stream = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => {
            match handshake {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cpgw simulator TLS handshake failed");
                    return;
                }
                Err(_elapsed) => return,
            }
        }
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection =
        builder.serve_connection(TokioIo::new(tls_stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "cpgw simulator connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
