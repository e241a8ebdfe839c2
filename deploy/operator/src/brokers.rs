//! What the operator asks the brokers themselves, on their admin listener (`/v1/...`, see the
//! broker's `net/src/broker/operations.rs`): the cluster's health, draining a broker before
//! it is removed, rebalancing after brokers were added. Behind a trait, so the reconciler's
//! tests answer for the brokers.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::crd::CoremqCluster;
use crate::render::{ADMIN_PORT, Names};

/// One broker in [`Health`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BrokerHealth {
    pub id: i32,
    pub fenced: bool,
    pub replicas: u64,
    pub leaders: u64,
}

/// `GET /v1/cluster`, as a broker answers it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub node_id: i32,
    pub controller_id: Option<i32>,
    pub brokers: Vec<BrokerHealth>,
    pub partitions: u64,
    pub under_replicated_partitions: u64,
    pub offline_partitions: u64,
    pub reassigning_partitions: u64,
    pub replication_factor_max: u64,
    pub replication_factor_max_topic: Option<String>,
}

impl Health {
    /// Replicas broker `id` holds (zero when it is not registered).
    pub fn replicas_of(&self, id: i32) -> u64 {
        self.brokers
            .iter()
            .find(|broker| broker.id == id)
            .map_or(0, |broker| broker.replicas)
    }

    /// Whether brokers `0..count` are all registered and in session.
    pub fn all_live(&self, count: i32) -> bool {
        (0..count).all(|id| {
            self.brokers
                .iter()
                .any(|broker| broker.id == id && !broker.fenced)
        })
    }

    /// Nothing under-replicated, offline or moving.
    pub fn settled(&self) -> bool {
        self.under_replicated_partitions == 0
            && self.offline_partitions == 0
            && self.reassigning_partitions == 0
    }
}

/// The brokers of a cluster, as the reconciler reaches them.
pub trait Brokers: Send + Sync + 'static {
    fn health<'a>(&'a self, cluster: &'a CoremqCluster) -> BoxFuture<'a, Result<Health, String>>;

    /// Starts moving every replica off broker `id`.
    fn drain<'a>(
        &'a self,
        cluster: &'a CoremqCluster,
        id: i32,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Starts spreading replicas evenly over the live brokers.
    fn rebalance<'a>(&'a self, cluster: &'a CoremqCluster) -> BoxFuture<'a, Result<(), String>>;
}

/// How long one request to a broker may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The brokers' admin listeners over HTTP, reached by their pods' DNS names; each request
/// goes to the first broker that answers.
pub struct AdminHttp {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for AdminHttp {
    fn default() -> AdminHttp {
        AdminHttp {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl AdminHttp {
    async fn call(
        &self,
        cluster: &CoremqCluster,
        method: http::Method,
        path: &str,
    ) -> Result<Bytes, String> {
        let names = Names::of(cluster);
        let mut failures = Vec::new();
        for ordinal in 0..cluster.spec.brokers {
            let host = names.host(ordinal, &cluster.spec.cluster_domain);
            let url = format!("http://{host}:{ADMIN_PORT}{path}");
            let request = http::Request::builder()
                .method(method.clone())
                .uri(&url)
                .body(Empty::new())
                .map_err(|error| error.to_string())?;
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            })
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            match answered {
                Ok(body) => return Ok(body),
                Err(failure) => failures.push(format!("{url}: {failure}")),
            }
        }
        Err(failures.join("; "))
    }
}

impl Brokers for AdminHttp {
    fn health<'a>(&'a self, cluster: &'a CoremqCluster) -> BoxFuture<'a, Result<Health, String>> {
        Box::pin(async move {
            let body = self.call(cluster, http::Method::GET, "/v1/cluster").await?;
            serde_json::from_slice(&body).map_err(|error| format!("/v1/cluster: {error}"))
        })
    }

    fn drain<'a>(
        &'a self,
        cluster: &'a CoremqCluster,
        id: i32,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let path = format!("/v1/brokers/{id}/drain");
            self.call(cluster, http::Method::POST, &path)
                .await
                .map(drop)
        })
    }

    fn rebalance<'a>(&'a self, cluster: &'a CoremqCluster) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let path = "/v1/partitions/rebalance";
            self.call(cluster, http::Method::POST, path).await.map(drop)
        })
    }
}
