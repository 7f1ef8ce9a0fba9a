//! Several gateway replicas on one shared store, in one process over real loopback sockets:
//! a private PostgreSQL server, a private NATS server the replicas route calls through, the
//! replicas (each with its own state directory and address,
//! the same gateway key and instance id, as an operator deploys them), the CPGW simulator, the
//! dev OAuth issuer and one sidecar daemon that dials one replica of the test's choosing.

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
    _root: tempfile::TempDir,
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
            _root: root,
        };
        for index in 0..replicas {
            let state_dir = cluster._root.path().join(format!("replica-{index}"));
            let mut config =
                GatewayConfiguration::for_dev(loopback(0), &cluster.issuer.issuer_url(), state_dir);
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
        if config.listen != bound.to_string() {
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
        crate::system::wait_registered(&mut events).await?;
        self.sidecar = Some(RunningSidecar::new(shutdown, task, released));
        Ok(())
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
    }
}
