//! Several gateway replicas on one shared store, in one process over real loopback sockets:
//! a private PostgreSQL server, a private NATS server the replicas route calls through, the
//! replicas (each with its own state directory and address,
//! the same gateway key and instance id, as an operator deploys them), the CPGW simulator, the
//! dev OAuth issuer and one sidecar daemon that dials one replica of the test's choosing.
//!
//! [`Cluster::start_behind_balancer`] puts the replicas behind a round-robin TCP balancer
//! ([`crate::balancer`]) with no affinity, as an operator deploys them: every replica's public
//! URL is the balancer's, and the sidecar and MCP clients dial the balancer.

use crate::balancer::Balancer;
use crate::cpgw_sim::{CpgwSimulator, SimConfig};
use crate::dev_issuer::{DevIssuer, TokenRequest};
use crate::private_nats::PrivateNats;
use crate::private_postgres::PrivatePostgres;
use crate::system::{RunningSidecar, SIMULATED_MARKET_TIME, SystemError, loopback};
use ibkr_agent::{DaemonOptions, SidecarConfig};
use ibkr_gateway::config::StoreBackend;
use ibkr_gateway::store::{PostgresOptions, Store};
use ibkr_gateway::{GatewayConfiguration, GatewayHandle};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use std::path::PathBuf;
use std::time::Duration;

/// The instance id every replica announces (a cluster is one gateway to its sidecars).
pub const CLUSTER_INSTANCE_ID: &str = "cluster-1";
/// The OAuth subject the cluster's sidecar is paired for.
pub const CLUSTER_USER: &str = "cluster-user";

/// A cluster; `None` from [`Cluster::start`] when PostgreSQL or NATS is not installed and the
/// run does not require them.
pub struct Cluster {
    pub postgres: PrivatePostgres,
    pub nats: PrivateNats,
    pub sim: CpgwSimulator,
    pub issuer: DevIssuer,
    replicas: Vec<Option<GatewayHandle>>,
    configs: Vec<GatewayConfiguration>,
    sidecar_state_dir: PathBuf,
    sidecar: Option<RunningSidecar>,
    /// The sidecar's `trading:` section (default: paper, dry-run).
    pub trading: ibkr_agent::trading::policy::TradingSection,
    /// In front of the replicas, when started with [`Cluster::start_behind_balancer`].
    pub balancer: Option<Balancer>,
    _root: tempfile::TempDir,
}

/// Session events of several replicas, each with its index.
struct Registrations(
    Vec<(
        usize,
        tokio::sync::broadcast::Receiver<ibkr_gateway::relay::SessionEvent>,
    )>,
);

impl Registrations {
    /// The replica where a sidecar session registers first.
    async fn first(mut self) -> Result<usize, SystemError> {
        let waits = self.0.iter_mut().map(|(index, receiver)| {
            let index = *index;
            Box::pin(async move {
                crate::system::wait_registered(receiver)
                    .await
                    .map(|()| index)
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}

impl Cluster {
    /// Starts PostgreSQL, the simulator, the issuer and `replicas` gateway replicas.
    pub async fn start(replicas: usize) -> Result<Option<Cluster>, SystemError> {
        Cluster::start_with(replicas, |_| {}).await
    }

    /// [`Cluster::start`], with `edit` applied to every replica's configuration.
    pub async fn start_with(
        replicas: usize,
        edit: impl Fn(&mut GatewayConfiguration),
    ) -> Result<Option<Cluster>, SystemError> {
        Cluster::start_inner(replicas, None, edit).await
    }

    /// [`Cluster::start`] behind a round-robin balancer: every replica's public URL (the
    /// token audience, the relay URL) is the balancer's, and the balancer sends new
    /// connections to every replica in turn.
    pub async fn start_behind_balancer(replicas: usize) -> Result<Option<Cluster>, SystemError> {
        Cluster::start_behind_balancer_with(replicas, |_| {}).await
    }

    /// [`Cluster::start_behind_balancer`], with `edit` applied to every replica's
    /// configuration.
    pub async fn start_behind_balancer_with(
        replicas: usize,
        edit: impl Fn(&mut GatewayConfiguration),
    ) -> Result<Option<Cluster>, SystemError> {
        let balancer = Balancer::start().await?;
        let Some(cluster) = Cluster::start_inner(replicas, Some(balancer), edit).await? else {
            return Ok(None);
        };
        cluster.route_to(&(0..replicas).collect::<Vec<_>>())?;
        Ok(Some(cluster))
    }

    async fn start_inner(
        replicas: usize,
        balancer: Option<Balancer>,
        edit: impl Fn(&mut GatewayConfiguration),
    ) -> Result<Option<Cluster>, SystemError> {
        let Some(postgres) = PrivatePostgres::start_or_skip()
            .map_err(|error| SystemError::Gateway(error.to_string()))?
        else {
            return Ok(None);
        };
        let Some(nats) = PrivateNats::start_or_skip()
            .map_err(|error| SystemError::Gateway(error.to_string()))?
        else {
            return Ok(None);
        };
        let root = tempfile::tempdir()?;
        let password_file = root.path().join("nats-password");
        std::fs::write(&password_file, crate::private_nats::PASSWORD)?;
        let sim = CpgwSimulator::start(SimConfig::default()).await?;
        let issuer = DevIssuer::start(loopback(0)).await?;
        let mut cluster = Cluster {
            postgres,
            nats,
            sim,
            issuer,
            replicas: Vec::new(),
            configs: Vec::new(),
            sidecar_state_dir: root.path().join("sidecar"),
            sidecar: None,
            trading: Default::default(),
            balancer,
            _root: root,
        };
        for index in 0..replicas {
            let state_dir = cluster._root.path().join(format!("replica-{index}"));
            let mut config = match &cluster.balancer {
                None => GatewayConfiguration::for_dev(
                    loopback(0),
                    &cluster.issuer.issuer_url(),
                    state_dir,
                ),
                Some(balancer) => {
                    // Public URLs are the balancer's; the replica listens on its own port and
                    // also answers requests addressed to it directly.
                    let mut config = GatewayConfiguration::for_dev(
                        balancer.local_addr(),
                        &cluster.issuer.issuer_url(),
                        state_dir,
                    );
                    config.listen = loopback(0).to_string();
                    config.remote_mcp.allowed_hosts = Some(vec!["127.0.0.1".into()]);
                    config
                }
            };
            config.instance_id = Some(CLUSTER_INSTANCE_ID.into());
            config.store.backend = StoreBackend::Postgres;
            // Named for validation; the harness hands each replica the store itself.
            config.store.postgres_url_env = Some("IBKR_GATEWAY_DATABASE_URL".into());
            config.cluster = Some(ibkr_gateway::config::ClusterSection {
                nats_url: cluster.nats.url(),
                nats_user: Some(crate::private_nats::USER.into()),
                nats_password_env: None,
                nats_password_file: Some(password_file.clone()),
            });
            config.sidecar.heartbeat_interval_seconds = 1;
            config.sidecar.heartbeat_timeout_seconds = 3;
            edit(&mut config);
            cluster.configs.push(config);
            cluster.replicas.push(None);
            cluster.start_replica(index).await?;
        }
        Ok(Some(cluster))
    }

    /// Starts replica `index` (again), on the address it had when it ran before. The first
    /// replica to start creates the gateway key; the others start with a copy of it, as the
    /// operator's secret store would hand it to them.
    pub async fn start_replica(&mut self, index: usize) -> Result<(), SystemError> {
        let key_file = ibkr_gateway::store::keys::KEY_FILE;
        let state_dir = self.configs[index].state_dir.clone();
        ibkr_gateway::store::ensure_state_dir(&state_dir)?;
        if let Some(source) = self
            .configs
            .iter()
            .map(|config| config.state_dir.join(key_file))
            .find(|path| path.exists())
            && !state_dir.join(key_file).exists()
        {
            std::fs::copy(&source, state_dir.join(key_file))?;
        }
        let store = Store::open_postgres(&PostgresOptions::new(self.postgres.url()))
            .await
            .map_err(|error| SystemError::Gateway(error.to_string()))?;
        let handle = ibkr_gateway::start_on_shared_store(self.configs[index].clone(), store)
            .await
            .map_err(|error| SystemError::Gateway(error.to_string()))?;
        // Come back at the same address after a restart.
        let bound = handle.local_addr();
        let config = &mut self.configs[index];
        if self.balancer.is_some() {
            config.listen = bound.to_string();
        } else if config.listen != bound.to_string() {
            let fresh = GatewayConfiguration::for_dev(
                bound,
                &self.issuer.issuer_url(),
                config.state_dir.clone(),
            );
            config.listen = fresh.listen;
            config.public_base_url = fresh.public_base_url;
            config.sidecar.remote_relay_url = fresh.sidecar.remote_relay_url;
        }
        self.replicas[index] = Some(handle);
        Ok(())
    }

    pub fn replica(&self, index: usize) -> Result<&GatewayHandle, SystemError> {
        self.replicas
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| SystemError::Gateway(format!("replica {index} is not running")))
    }

    /// Sends the balancer's new connections to these replicas only (as an operator drains
    /// the others).
    pub fn route_to(&self, replicas: &[usize]) -> Result<(), SystemError> {
        let balancer = self.balancer()?;
        let addresses = replicas
            .iter()
            .map(|index| self.replica(*index).map(GatewayHandle::local_addr))
            .collect::<Result<Vec<_>, _>>()?;
        balancer.set_backends(addresses);
        Ok(())
    }

    pub fn balancer(&self) -> Result<&Balancer, SystemError> {
        self.balancer
            .as_ref()
            .ok_or_else(|| SystemError::Gateway("this cluster has no balancer".into()))
    }

    /// Connections replica `index` received through the balancer so far.
    pub fn received_through_balancer(&self, index: usize) -> Result<usize, SystemError> {
        Ok(self.balancer()?.received(self.replica(index)?.local_addr()))
    }

    /// Replica `index`'s MCP endpoint at its own address, past the balancer.
    pub fn direct_mcp_url(&self, index: usize) -> Result<String, SystemError> {
        Ok(format!("http://{}/mcp", self.replica(index)?.local_addr()))
    }

    /// Replica `index`'s base URL at its own address, past the balancer.
    pub fn direct_base_url(&self, index: usize) -> Result<String, SystemError> {
        Ok(format!("http://{}", self.replica(index)?.local_addr()))
    }

    /// The replica holding the sidecar's live session, if any.
    pub fn holder(&self) -> Option<usize> {
        self.replicas.iter().position(|replica| {
            replica
                .as_ref()
                .is_some_and(|handle| !handle.live_sidecars().is_empty())
        })
    }

    /// Stops replica `index` at once, as a machine that dies: its websockets drop.
    pub async fn kill_replica(&mut self, index: usize) {
        if let Some(handle) = self.replicas.get_mut(index).and_then(Option::take) {
            handle.shutdown().await;
        }
    }

    /// Pairs the sidecar through replica `pair_on` with a code issued on replica `code_on`.
    pub async fn pair(
        &mut self,
        code_on: usize,
        pair_on: usize,
    ) -> Result<ibkr_agent::PairingRecord, SystemError> {
        let code = self
            .replica(code_on)?
            .issue_pairing_code(CLUSTER_USER, Duration::from_secs(600))
            .await
            .map_err(|error| SystemError::Gateway(error.to_string()))?;
        if !self.sidecar_state_dir.join("identity.key").exists() {
            ibkr_agent::create_identity(&self.sidecar_state_dir, "cluster-laptop", None, None)
                .map_err(|error| SystemError::Sidecar(error.to_string()))?;
        }
        let base_url = self.replica(pair_on)?.base_url();
        ibkr_agent::pair(&self.sidecar_state_dir, &base_url, &code, None)
            .await
            .map_err(|error| SystemError::Sidecar(error.to_string()))
    }

    /// Grants `scopes` locally on the laptop for `pairing` (what the owner does with
    /// `ibkr-agent sidecar grants`).
    pub fn grant_locally(
        &self,
        pairing: &ibkr_agent::PairingRecord,
        scopes: &[&str],
    ) -> Result<(), SystemError> {
        let store = ibkr_agent::StateStore::open(&self.sidecar_state_dir)
            .map_err(|error| SystemError::Sidecar(error.to_string()))?;
        store
            .set_local_scopes(
                &pairing.remote_instance_id,
                &pairing.sidecar_id,
                &shared_safety::scope::ScopeSet::from_list(scopes),
            )
            .map_err(|error| SystemError::Sidecar(error.to_string()))?
            .then_some(())
            .ok_or_else(|| SystemError::Sidecar("no such pairing on the laptop".into()))
    }

    /// The sidecar's configuration, dialing replica `index`.
    pub fn sidecar_config(&self, index: usize) -> Result<SidecarConfig, SystemError> {
        let mut config = SidecarConfig::default();
        config.sidecar.enabled = true;
        config.safety.sidecar_enabled = true;
        config.sidecar.remote_relay_url = Some(self.replica(index)?.relay_url());
        config.sidecar.local_client_portal_base_url = self.sim.base_url();
        config.sidecar.heartbeat_interval_seconds = 1;
        config.sidecar.heartbeat_timeout_seconds = 3;
        config.sidecar.reconnect_initial_delay_ms = 50;
        config.sidecar.reconnect_max_delay_ms = 500;
        config.sidecar.tickle_interval_seconds = ibkr_agent::config::MIN_TICKLE_INTERVAL_SECONDS;
        config.trading = self.trading.clone();
        Ok(config)
    }

    /// Starts the sidecar daemon dialing replica `index` and waits until that replica has
    /// registered its session.
    pub async fn start_sidecar(&mut self, index: usize) -> Result<(), SystemError> {
        let config = self.sidecar_config(index)?;
        let mut events = self.replica(index)?.subscribe_sessions();
        self.spawn_sidecar(config);
        crate::system::wait_registered(&mut events).await
    }

    fn spawn_sidecar(&mut self, config: SidecarConfig) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let released = tokio_util::sync::CancellationToken::new();
        let options = DaemonOptions {
            state_dir: self.sidecar_state_dir.clone(),
            config,
            frame_observer: None,
            released: Some(released.clone()),
            market_clock: ibkr_agent::market_clock::MarketClock::simulated_at(
                SIMULATED_MARKET_TIME,
            ),
        };
        let task = tokio::spawn(ibkr_agent::run_daemon(options, shutdown.clone()));
        self.sidecar = Some(RunningSidecar::new(shutdown, task, released));
    }

    /// Replica `index`'s own state directory (its audit trail, its replica id).
    pub fn replica_state_dir(&self, index: usize) -> Option<&std::path::Path> {
        self.configs
            .get(index)
            .map(|config| config.state_dir.as_path())
    }

    pub fn sidecar_state_dir(&self) -> &std::path::Path {
        &self.sidecar_state_dir
    }

    /// Stops the sidecar daemon (graceful).
    pub async fn stop_sidecar(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
    }

    /// Starts the sidecar daemon dialing the balancer and waits until some replica has
    /// registered its session; returns which.
    pub async fn start_sidecar_via_balancer(&mut self) -> Result<usize, SystemError> {
        let mut config = self.sidecar_config(0)?;
        config.sidecar.remote_relay_url = Some(self.replica(0)?.relay_url());
        let registrations = self.registrations();
        self.spawn_sidecar(config);
        registrations.first().await
    }

    /// Waits until some running replica holds the sidecar's session (after its replica
    /// died, the sidecar reconnects through the balancer on its own schedule); returns which.
    pub async fn wait_for_holder(&self) -> Result<usize, SystemError> {
        let registrations = self.registrations();
        // Subscribed first, then looked: a registration in between is not missed.
        if let Some(holder) = self.holder() {
            return Ok(holder);
        }
        registrations.first().await
    }

    /// Session events of every running replica, from now on.
    fn registrations(&self) -> Registrations {
        Registrations(
            self.replicas
                .iter()
                .enumerate()
                .filter_map(|(index, replica)| {
                    replica
                        .as_ref()
                        .map(|handle| (index, handle.subscribe_sessions()))
                })
                .collect(),
        )
    }

    /// An MCP client that reaches the replicas through the balancer on a new connection for
    /// every request, so consecutive requests land on different replicas. `stateless`: the
    /// 2026-07-28 revision; else 2025-11-25 with its `Mcp-Session-Id` session.
    pub async fn balanced_mcp_client<H: rmcp::ClientHandler>(
        &self,
        handler: H,
        token: &str,
        stateless: bool,
    ) -> Result<RunningService<RoleClient, H>, SystemError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|error| SystemError::Mcp(error.to_string()))?;
        let url = format!("http://{}/mcp", self.balancer()?.local_addr());
        // rmcp's client silently starts a new session when one is answered 404; here a
        // session that another replica cannot serve must fail the call instead.
        let mut config = StreamableHttpClientTransportConfig::with_uri(url)
            .auth_header(token)
            .reinit_on_expired_session(false);
        config.allow_stateless = stateless;
        let transport = StreamableHttpClientTransport::with_client(http, config);
        let served = if stateless {
            rmcp::service::ClientServiceExt::serve_with_lifecycle(
                handler,
                transport,
                rmcp::service::ClientLifecycleMode::Discover {
                    preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
                },
            )
            .await
        } else {
            handler.serve(transport).await
        };
        served.map_err(|error| SystemError::Mcp(error.to_string()))
    }

    /// A token for the cluster's user, for replica `index`'s resource.
    pub fn token(&self, index: usize, scopes: &[&str]) -> Result<String, SystemError> {
        let request = TokenRequest::new(CLUSTER_USER, &self.replica(index)?.mcp_url(), scopes);
        self.issuer
            .mint(&request)
            .map_err(|error| SystemError::Issuer(error.to_string()))
    }

    /// A real MCP client connected to replica `index`.
    pub async fn mcp_client(
        &self,
        index: usize,
        token: &str,
    ) -> Result<RunningService<RoleClient, ()>, SystemError> {
        let config = StreamableHttpClientTransportConfig::with_uri(self.replica(index)?.mcp_url())
            .auth_header(token);
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|error| SystemError::Mcp(error.to_string()))
    }

    pub async fn shutdown(mut self) {
        self.stop_sidecar().await;
        for index in 0..self.replicas.len() {
            self.kill_replica(index).await;
        }
        self.issuer.shutdown().await;
        self.sim.shutdown().await;
        if let Some(balancer) = self.balancer.take() {
            balancer.shutdown().await;
        }
    }
}
