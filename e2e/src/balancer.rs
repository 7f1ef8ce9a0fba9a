//! A loopback TCP load balancer in front of gateway replicas, as an operator's layer-4
//! balancer (HAProxy in TCP mode, a cloud network load balancer) stands in front of them.
//!
//! Every new connection goes to the next backend in turn (round robin); a backend that
//! refuses the connection (a dead replica) is skipped for the next one, as a health-checked
//! balancer does. There is no session affinity: consecutive connections of one client land on
//! different replicas. The balancer counts the connections each backend received, so a test
//! can check where traffic went.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Routing {
    backends: Vec<SocketAddr>,
    received: HashMap<SocketAddr, usize>,
}

pub struct Balancer {
    address: SocketAddr,
    routing: Arc<Mutex<Routing>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn lock(routing: &Mutex<Routing>) -> std::sync::MutexGuard<'_, Routing> {
    routing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Balancer {
    /// Listens on a free loopback port, with no backend yet (connections are closed at once
    /// until [`Balancer::set_backends`]).
    pub async fn start() -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let routing = Arc::new(Mutex::new(Routing::default()));
        let shutdown = CancellationToken::new();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let routing = Arc::clone(&routing);
            let shutdown = shutdown.clone();
            async move {
                loop {
                    let client = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => client,
                            Err(_) => continue,
                        },
                    };
                    tokio::spawn(forward(
                        client,
                        Arc::clone(&routing),
                        Arc::clone(&next),
                        shutdown.clone(),
                    ));
                }
            }
        });
        Ok(Balancer {
            address,
            routing,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The backends new connections go to, in rotation order. Open connections stay where
    /// they are.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        lock(&self.routing).backends = backends;
    }

    /// Connections `backend` has received so far.
    pub fn received(&self, backend: SocketAddr) -> usize {
        lock(&self.routing)
            .received
            .get(&backend)
            .copied()
            .unwrap_or(0)
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn forward(
    mut client: TcpStream,
    routing: Arc<Mutex<Routing>>,
    next: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let backends = lock(&routing).backends.clone();
    let mut upstream = None;
    for _ in 0..backends.len() {
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        if let Ok(stream) = TcpStream::connect(backend).await {
            *lock(&routing).received.entry(backend).or_default() += 1;
            upstream = Some(stream);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
}
