//! The whole product on one machine, in one process, over real loopback sockets: the CPGW
//! simulator (HTTPS), the dev OAuth issuer, the gateway, and a sidecar paired through the real
//! pairing flow. The end-to-end tests and the demo both drive it with a real MCP client.

use crate::cpgw_sim::{AuthState, CpgwSimulator, SimConfig};
use crate::dev_issuer::{DevIssuer, TokenRequest};
use crate::fault_proxy::FaultProxy;
use ibkr_agent::{DaemonOptions, SidecarConfig};
use ibkr_gateway::{GatewayConfiguration, GatewayHandle, SessionEvent};
use protocol::frame::Frame;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The OAuth subject the system's sidecar is paired for.
pub const DEFAULT_USER: &str = "dev-user";

/// How long any single wait of the harness may take before it reports a failure.
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

pub type FrameObserver = Arc<dyn Fn(&Frame) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error("sidecar: {0}")]
    Sidecar(String),
    #[error("issuer: {0}")]
    Issuer(String),
    #[error("mcp client: {0}")]
    Mcp(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// Knobs for one system.
#[derive(Clone)]
pub struct SystemOptions {
    pub user_id: String,
    pub auth_state: AuthState,
    /// Heartbeat of both halves (seconds). Short values make dead-peer tests fast.
    pub heartbeat_interval_seconds: u64,
    pub heartbeat_timeout_seconds: u64,
    /// Relay session lifetime on the gateway (must exceed the heartbeat timeout).
    pub session_ttl_seconds: u64,
    /// Start and pair a sidecar (false: the gateway has no sidecar at all).
    pub with_sidecar: bool,
    pub frame_observer: Option<FrameObserver>,
    /// The sidecar's `trading:` section (defaults: paper, dry-run, 100 USD cap, 5 s window).
    pub trading: ibkr_agent::trading::policy::TradingSection,
    /// The exchange clock the sidecar judges trading hours by. The simulator trades on any day,
    /// so simulations pin a regular-hours time; `None` uses the real clock.
    pub market_time: Option<time::OffsetDateTime>,
    /// The sidecar's `alerts:` section (None: alerts are only logged).
    pub alerts: Option<ibkr_agent::alerts::AlertsSection>,
    /// How long the gateway waits for a relayed call (`sidecar.request_timeout_seconds`);
    /// `None`: the gateway's default.
    pub request_timeout_seconds: Option<u64>,
    /// Calls in flight at once, on both halves; `None`: the defaults.
    pub max_concurrent_calls: Option<usize>,
    /// The sidecar's own `sidecar.max_concurrent_requests` (wins over `max_concurrent_calls`
    /// on the sidecar); `None`: as `max_concurrent_calls`.
    pub sidecar_max_concurrent_requests: Option<usize>,
    /// The gateway's open connections per client address (`remote_mcp.max_connections_per_peer`);
    /// `None`: the default. Every test client dials from 127.0.0.1, so a test that stands for
    /// many agents on many hosts raises it.
    pub max_connections_per_peer: Option<usize>,
    /// The gateway's per-subject and per-peer rate limits (requests a minute); `None`: the
    /// defaults. A benchmark that stands for many agents of one user on one host raises them.
    pub rate_limit_per_minute: Option<u32>,
    /// MCP sessions one user may hold (`remote_mcp.max_sessions_per_user`); tests that play
    /// many agents of one user at once raise it.
    pub max_sessions_per_user: Option<usize>,
    /// Put a [`FaultProxy`] between the sidecar and the CPGW simulator ([`System::proxy`]), so
    /// a test can take CPGW down, slow it or reset its connections.
    pub cpgw_through_proxy: bool,
    /// The sidecar's `sidecar.client_portal_timeout_seconds`; `None`: its default (10 s).
    pub client_portal_timeout_seconds: Option<u64>,
    /// The sidecar's `sidecar.quote_max_age_ms`; `None`: its default (1000 ms).
    pub quote_max_age_ms: Option<u64>,
    /// The gateway is its own authorization server (no `remote_mcp.issuer`): agents sign in
    /// with the laptop's approval instead of a dev-issuer token.
    pub builtin_authorization_server: bool,
    /// The built-in server's `remote_mcp.approval_timeout_seconds`; `None`: its default.
    pub approval_timeout_seconds: Option<u64>,
}

/// Tuesday 24 November 2026, 10:00 ET: inside regular trading hours.
pub const SIMULATED_MARKET_TIME: time::OffsetDateTime =
    time::macros::datetime!(2026-11-24 15:00 UTC);

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            user_id: DEFAULT_USER.to_string(),
            auth_state: AuthState::LoggedIn,
            heartbeat_interval_seconds: 1,
            heartbeat_timeout_seconds: 3,
            session_ttl_seconds: 3600,
            with_sidecar: true,
            frame_observer: None,
            trading: ibkr_agent::trading::policy::TradingSection::default(),
            market_time: Some(SIMULATED_MARKET_TIME),
            alerts: None,
            request_timeout_seconds: None,
            max_concurrent_calls: None,
            sidecar_max_concurrent_requests: None,
            max_connections_per_peer: None,
            rate_limit_per_minute: None,
            max_sessions_per_user: None,
            cpgw_through_proxy: false,
            client_portal_timeout_seconds: None,
            quote_max_age_ms: None,
            builtin_authorization_server: false,
            approval_timeout_seconds: None,
        }
    }
}

/// A sidecar daemon running as a task of this process.
pub struct RunningSidecar {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ibkr_agent::DaemonError>>,
    /// Cancelled when the daemon's last task let go of its state (journal lock included).
    released: CancellationToken,
}

impl RunningSidecar {
    pub(crate) fn new(
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), ibkr_agent::DaemonError>>,
        released: CancellationToken,
    ) -> RunningSidecar {
        RunningSidecar {
            shutdown,
            task,
            released,
        }
    }

    /// Graceful stop (the daemon says goodbye to the gateway).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT_LIMIT, self.task).await;
        let _ = tokio::time::timeout(WAIT_LIMIT, self.released.cancelled()).await;
    }

    /// Abrupt stop, as if the process were killed: the task is dropped mid-flight. Returns
    /// once everything it held is released (a process exit releases the journal's lock at
    /// once; tasks aborted in this process let go a moment later), so a daemon started next
    /// finds the journal free.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = tokio::time::timeout(WAIT_LIMIT, self.released.cancelled()).await;
    }
}

pub struct System {
    pub options: SystemOptions,
    pub sim: CpgwSimulator,
    /// Between the sidecar and the simulator when `SystemOptions::cpgw_through_proxy`.
    proxy: Option<FaultProxy>,
    pub issuer: DevIssuer,
    gateway: Option<GatewayHandle>,
    gateway_config: GatewayConfiguration,
    pub sidecar_state_dir: PathBuf,
    sidecar: Option<RunningSidecar>,
    _root: tempfile::TempDir,
}

async fn within<T>(
    what: &'static str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, SystemError> {
    tokio::time::timeout(WAIT_LIMIT, future)
        .await
        .map_err(|_| SystemError::Timeout(what))
}

impl System {
    /// Starts everything and, unless told otherwise, pairs and connects a sidecar.
    pub async fn start(options: SystemOptions) -> Result<System, SystemError> {
        let root = tempfile::tempdir()?;
        let sim = CpgwSimulator::start(SimConfig {
            auth_state: options.auth_state,
            ..SimConfig::default()
        })
        .await?;
        let proxy = if options.cpgw_through_proxy {
            Some(FaultProxy::start(sim.local_addr()).await?)
        } else {
            None
        };
        let issuer = DevIssuer::start(loopback(0)).await?;

        let gateway_config_for = |listen: SocketAddr| {
            let mut config = GatewayConfiguration::for_dev(
                listen,
                &issuer.issuer_url(),
                root.path().join("gateway"),
            );
            config.sidecar.heartbeat_interval_seconds = options.heartbeat_interval_seconds;
            config.sidecar.heartbeat_timeout_seconds = options.heartbeat_timeout_seconds;
            config.sidecar.session_ttl_seconds = options.session_ttl_seconds;
            if let Some(seconds) = options.request_timeout_seconds {
                config.sidecar.request_timeout_seconds = seconds;
            }
            if let Some(calls) = options.max_concurrent_calls {
                config.sidecar.max_in_flight_per_sidecar = calls;
            }
            if let Some(sessions) = options.max_sessions_per_user {
                config.remote_mcp.max_sessions_per_user = sessions;
            }
            if let Some(per_minute) = options.rate_limit_per_minute {
                config.remote_mcp.rate_limit_per_subject_per_minute = per_minute;
                config.remote_mcp.rate_limit_per_peer_per_minute = per_minute;
            }
            if let Some(connections) = options.max_connections_per_peer {
                config.remote_mcp.max_connections_per_peer = connections;
            }
            if options.builtin_authorization_server {
                config.remote_mcp.issuer = None;
            }
            if let Some(seconds) = options.approval_timeout_seconds {
                config.remote_mcp.approval_timeout_seconds = seconds;
            }
            config
        };
        let gateway = ibkr_gateway::start(gateway_config_for(loopback(0)))
            .await
            .map_err(|e| SystemError::Gateway(e.to_string()))?;
        // Pin the bound port so a restarted gateway comes back at the same address.
        let gateway_config = gateway_config_for(gateway.local_addr());

        let sidecar_state_dir = root.path().join("sidecar");
        let mut system = System {
            options,
            sim,
            proxy,
            issuer,
            gateway: Some(gateway),
            gateway_config,
            sidecar_state_dir,
            sidecar: None,
            _root: root,
        };
        if system.options.with_sidecar {
            system.pair_sidecar().await?;
            system.start_sidecar().await?;
        }
        Ok(system)
    }

    /// The fault proxy between the sidecar and CPGW (`SystemOptions::cpgw_through_proxy`).
    pub fn proxy(&self) -> Result<&FaultProxy, SystemError> {
        self.proxy
            .as_ref()
            .ok_or_else(|| SystemError::Sidecar("this system has no CPGW proxy".into()))
    }

    pub fn gateway(&self) -> Result<&GatewayHandle, SystemError> {
        self.gateway
            .as_ref()
            .ok_or_else(|| SystemError::Gateway("gateway is stopped".into()))
    }

    /// The gateway's MCP endpoint: the in-process gateway's, or, while the gateway runs as a
    /// separate process on the same configuration, the one its configuration names.
    pub fn mcp_url(&self) -> Result<String, SystemError> {
        match &self.gateway {
            Some(gateway) => Ok(gateway.mcp_url()),
            None => Ok(format!(
                "{}/mcp",
                self.gateway_config.public_base_url.trim_end_matches('/')
            )),
        }
    }

    /// Replaces the in-process gateway with the `ibkr-gateway serve` binary on the same
    /// configuration, address and state, and returns once it answers `/healthz`. Its output
    /// goes to `gateway.log` in its state directory.
    pub async fn start_gateway_process(
        &mut self,
    ) -> Result<crate::processes::ChildProcess, SystemError> {
        let binary = crate::processes::workspace_binary("ibkr-gateway")
            .map_err(|e| SystemError::Gateway(e.to_string()))?;
        self.start_gateway_process_with(&binary, &[]).await
    }

    /// [`System::start_gateway_process`] with another program that takes the gateway's
    /// command line after `leading_args` (a benchmark that runs the gateway's CLI itself).
    pub async fn start_gateway_process_with(
        &mut self,
        program: &Path,
        leading_args: &[&str],
    ) -> Result<crate::processes::ChildProcess, SystemError> {
        self.stop_gateway().await;
        let config = self.write_gateway_config()?;
        let log = self.gateway_config.state_dir.join("gateway.log");
        let config = config.display().to_string();
        let mut args = leading_args.to_vec();
        args.extend(["serve", "--config", &config]);
        let child =
            crate::processes::ChildProcess::spawn("ibkr-gateway", program, &args, &[], &log)
                .map_err(|e| SystemError::Gateway(e.to_string()))?;
        let health = format!(
            "{}/healthz",
            self.gateway_config.public_base_url.trim_end_matches('/')
        );
        let http = reqwest::Client::new();
        let answered = within("the gateway process to answer /healthz", async {
            loop {
                // Another process: nothing to subscribe to, so ask until it answers.
                if let Ok(response) = http.get(&health).send().await
                    && response.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if answered.is_err() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(SystemError::Gateway(format!(
                "the gateway process did not come up: {output}"
            )));
        }
        Ok(child)
    }

    /// Waits until the user's sidecar is connected, as `ibkr_health` reports it (for a
    /// gateway in another process, whose session events this process cannot subscribe to).
    pub async fn wait_sidecar_connected(&self) -> Result<(), SystemError> {
        let token = self.token(&["ibkr:health:read"])?;
        within("the sidecar to connect", async {
            loop {
                if let Ok(client) = self.mcp_client(&token).await {
                    let called = client
                        .call_tool(rmcp::model::CallToolRequestParams::new("ibkr_health"))
                        .await;
                    let _ = client.cancel().await;
                    if let Ok(result) = called
                        && result
                            .structured_content
                            .as_ref()
                            .is_some_and(|body| body["relay"]["connected"] == true)
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Replaces the in-process sidecar with the `ibkr-agent sidecar run` binary on the same
    /// state directory and configuration (written to `sidecar.yaml`), and returns once the
    /// gateway has registered its session. Output goes to `sidecar.log` in its state
    /// directory. Its market clock is the real one.
    pub async fn start_sidecar_process(
        &mut self,
    ) -> Result<crate::processes::ChildProcess, SystemError> {
        let binary = crate::processes::workspace_binary("ibkr-agent")
            .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        self.start_sidecar_process_with(&binary, &[]).await
    }

    /// [`System::start_sidecar_process`] with another program that takes the sidecar's
    /// command line after `leading_args`.
    pub async fn start_sidecar_process_with(
        &mut self,
        program: &Path,
        leading_args: &[&str],
    ) -> Result<crate::processes::ChildProcess, SystemError> {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
        self.write_sidecar_config()?;
        let mut events = self.gateway()?.subscribe_sessions();
        let log = self.sidecar_state_dir.join("sidecar.log");
        let state_dir = self.sidecar_state_dir.display().to_string();
        let mut args = leading_args.to_vec();
        args.extend(["--state-dir", &state_dir, "sidecar", "run"]);
        let child = crate::processes::ChildProcess::spawn("ibkr-agent", program, &args, &[], &log)
            .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        if let Err(error) = wait_registered(&mut events).await {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(SystemError::Sidecar(format!("{error}: {output}")));
        }
        Ok(child)
    }

    /// Issues a code for the system's user and pairs the sidecar with it.
    pub async fn pair_sidecar(&mut self) -> Result<ibkr_agent::PairingRecord, SystemError> {
        let code = self
            .gateway()?
            .issue_pairing_code(&self.options.user_id, Duration::from_secs(600))
            .await
            .map_err(|e| SystemError::Gateway(e.to_string()))?;
        self.pair_sidecar_with_code(&code).await
    }

    /// Creates the sidecar identity if needed and runs the real pairing exchange (the same code
    /// path as `ibkr-agent sidecar pair`) against the gateway.
    pub async fn pair_sidecar_with_code(
        &mut self,
        code: &str,
    ) -> Result<ibkr_agent::PairingRecord, SystemError> {
        let base_url = self.gateway()?.base_url();
        if !self.sidecar_state_dir.join("identity.key").exists() {
            ibkr_agent::create_identity(&self.sidecar_state_dir, "e2e-laptop", None, None)
                .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        }
        ibkr_agent::pair(&self.sidecar_state_dir, &base_url, code, None)
            .await
            .map_err(|e| SystemError::Sidecar(e.to_string()))
    }

    /// The sidecar configuration, every checklist item stated explicitly (as the YAML must).
    pub fn sidecar_config(&self) -> Result<SidecarConfig, SystemError> {
        let mut config = SidecarConfig::default();
        config.sidecar.enabled = true;
        config.safety.sidecar_enabled = true;
        config.sidecar.remote_relay_url = Some(self.gateway()?.relay_url());
        config.sidecar.local_client_portal_base_url = match &self.proxy {
            Some(proxy) => proxy.cpgw_base_url(),
            None => self.sim.base_url(),
        };
        if let Some(seconds) = self.options.client_portal_timeout_seconds {
            config.sidecar.client_portal_timeout_seconds = seconds;
        }
        if let Some(milliseconds) = self.options.quote_max_age_ms {
            config.sidecar.quote_max_age_ms = milliseconds;
        }
        config.sidecar.heartbeat_interval_seconds = self.options.heartbeat_interval_seconds;
        config.sidecar.heartbeat_timeout_seconds = self.options.heartbeat_timeout_seconds;
        config.sidecar.reconnect_initial_delay_ms = 50;
        config.sidecar.reconnect_max_delay_ms = 500;
        config.sidecar.tickle_interval_seconds = ibkr_agent::config::MIN_TICKLE_INTERVAL_SECONDS;
        config.trading = self.options.trading.clone();
        config.alerts = self.options.alerts.clone();
        if let Some(calls) = self
            .options
            .sidecar_max_concurrent_requests
            .or(self.options.max_concurrent_calls)
        {
            config.sidecar.max_concurrent_requests = calls;
        }
        Ok(config)
    }

    /// Writes [`System::sidecar_config`] to `sidecar.yaml` in the sidecar's state directory,
    /// where `ibkr-agent sidecar pair` puts it, so commands that read it (`sidecar doctor`,
    /// `sidecar run`) see what the running daemon uses.
    pub fn write_sidecar_config(&self) -> Result<std::path::PathBuf, SystemError> {
        let text = self
            .sidecar_config()?
            .to_yaml()
            .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        let path = self.sidecar_state_dir.join(ibkr_agent::config::CONFIG_FILE);
        std::fs::write(&path, text).map_err(|e| SystemError::Sidecar(e.to_string()))?;
        Ok(path)
    }

    /// Writes the gateway's configuration to `gateway.yaml` in its state directory, for the
    /// `ibkr-gateway` commands an operator runs with `--config`.
    pub fn write_gateway_config(&self) -> Result<PathBuf, SystemError> {
        let path = self.gateway_config.state_dir.join("gateway.yaml");
        let text = serde_yaml_ng::to_string(&self.gateway_config)
            .map_err(|e| SystemError::Gateway(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| SystemError::Gateway(e.to_string()))?;
        Ok(path)
    }

    /// Stops the gateway (graceful) and leaves it stopped.
    pub async fn stop_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// Starts the sidecar daemon and waits until the gateway has registered its session.
    pub async fn start_sidecar(&mut self) -> Result<(), SystemError> {
        let config = self.sidecar_config()?;
        self.start_sidecar_with(config).await
    }

    /// Starts the sidecar daemon from `sidecar.yaml` in its state directory, as `ibkr-agent
    /// sidecar run` does, and waits until the gateway has registered its session.
    pub async fn start_sidecar_from_file(&mut self) -> Result<(), SystemError> {
        let path = self.sidecar_state_dir.join(ibkr_agent::config::CONFIG_FILE);
        let config = SidecarConfig::load(&path).map_err(|e| SystemError::Sidecar(e.to_string()))?;
        self.start_sidecar_with(config).await
    }

    async fn start_sidecar_with(&mut self, config: SidecarConfig) -> Result<(), SystemError> {
        let mut events = self.gateway()?.subscribe_sessions();
        let shutdown = CancellationToken::new();
        let released = CancellationToken::new();
        let options = DaemonOptions {
            state_dir: self.sidecar_state_dir.clone(),
            config,
            frame_observer: self.options.frame_observer.clone(),
            released: Some(released.clone()),
            market_clock: match self.options.market_time {
                Some(at) => ibkr_agent::market_clock::MarketClock::simulated_at(at),
                None => ibkr_agent::market_clock::MarketClock::system(),
            },
        };
        let mut task = tokio::spawn(ibkr_agent::run_daemon(options, shutdown.clone()));
        // A daemon that refuses to start says why at once, rather than as a registration
        // timeout.
        let registered = tokio::select! {
            registered = wait_registered(&mut events) => registered,
            ended = &mut task => {
                return Err(SystemError::Sidecar(match ended {
                    Ok(Ok(())) => "the daemon stopped before registering".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Err(join) => join.to_string(),
                }));
            }
        };
        self.sidecar = Some(RunningSidecar {
            shutdown,
            task,
            released,
        });
        registered
    }

    /// Stops the real daemon and puts a hand-driven sidecar with the same paired key in its
    /// place, registered (key-confirmed) with the gateway. Returns it with a session-event
    /// receiver subscribed before it connected.
    pub async fn replace_sidecar_with_raw(
        &mut self,
    ) -> Result<
        (
            crate::raw_sidecar::RawSidecar,
            broadcast::Receiver<SessionEvent>,
        ),
        SystemError,
    > {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
        let gateway = self.gateway()?;
        let mut events = gateway.subscribe_sessions();
        let handshake = crate::raw_sidecar::RawSidecar::connect(
            &self.sidecar_state_dir,
            &gateway.relay_url(),
            crate::raw_sidecar::Claims::default(),
        )
        .await
        .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        let mut raw = match handshake {
            crate::raw_sidecar::Handshake::Accepted(raw) => *raw,
            crate::raw_sidecar::Handshake::Rejected { code } => {
                return Err(SystemError::Sidecar(format!("handshake refused: {code}")));
            }
        };
        raw.confirm()
            .await
            .map_err(|e| SystemError::Sidecar(e.to_string()))?;
        wait_registered(&mut events).await?;
        Ok((raw, events))
    }

    pub fn take_sidecar(&mut self) -> Option<RunningSidecar> {
        self.sidecar.take()
    }

    /// Stops the gateway (graceful) and starts a new one on the same address and state.
    pub async fn restart_gateway(&mut self) -> Result<(), SystemError> {
        self.stop_gateway().await;
        let gateway = ibkr_gateway::start(self.gateway_config.clone())
            .await
            .map_err(|e| SystemError::Gateway(e.to_string()))?;
        self.gateway = Some(gateway);
        Ok(())
    }

    /// A token for the system's user with the given scopes, audience = the canonical resource.
    pub fn token(&self, scopes: &[&str]) -> Result<String, SystemError> {
        self.token_for(&self.options.user_id, scopes)
    }

    pub fn token_for(&self, subject: &str, scopes: &[&str]) -> Result<String, SystemError> {
        let request = TokenRequest::new(subject, &self.mcp_url()?, scopes);
        self.issuer
            .mint(&request)
            .map_err(|e| SystemError::Issuer(e.to_string()))
    }

    /// A real MCP client (rmcp, Streamable HTTP, 2025-11-25 lifecycle) with a bearer token.
    pub async fn mcp_client(
        &self,
        token: &str,
    ) -> Result<RunningService<RoleClient, ()>, SystemError> {
        let config =
            StreamableHttpClientTransportConfig::with_uri(self.mcp_url()?).auth_header(token);
        let transport = StreamableHttpClientTransport::from_config(config);
        ().serve(transport)
            .await
            .map_err(|e| SystemError::Mcp(e.to_string()))
    }

    pub fn sidecar_state_dir(&self) -> &Path {
        &self.sidecar_state_dir
    }

    /// The gateway's `state_dir` (store, keys, `audit.head`).
    pub fn gateway_state_dir(&self) -> &Path {
        &self.gateway_config.state_dir
    }

    /// Stops everything gracefully.
    /// Stops everything. Panics when the sidecar ever tripped the simulator's pacing limits
    /// (a 429): with a real CPGW that is a penalty box of up to 15 minutes on every endpoint,
    /// exits included, so every test that shuts a system down checks it never happened.
    pub async fn shutdown(mut self) {
        let pacing = self.sim.pacing();
        assert_eq!(
            pacing.rejected_total, 0,
            "the sidecar exceeded IBKR's pacing limits: {pacing:?}"
        );
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        self.issuer.shutdown().await;
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

/// Waits for the next `Registered` session event.
pub async fn wait_registered(
    events: &mut broadcast::Receiver<SessionEvent>,
) -> Result<(), SystemError> {
    within("the sidecar session to register", async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Registered { .. }) => return Ok(()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(SystemError::Gateway("session events closed".into()));
                }
            }
        }
    })
    .await?
}

/// The tool names `tools/list` shows a client (every page), in order.
pub async fn tool_names(client: &rmcp::Peer<RoleClient>) -> Result<Vec<String>, SystemError> {
    let tools = within("tools/list", client.list_all_tools())
        .await?
        .map_err(|e| SystemError::Mcp(e.to_string()))?;
    Ok(tools
        .into_iter()
        .map(|tool| tool.name.to_string())
        .collect())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
