//! The embedded Kafka-protocol broker: librdkafka's mock cluster, in-process,
//! speaking the real protocol over TCP. For the demo, tests and local
//! development; any Kafka client can connect to [`Broker::bootstrap`].

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: {0}")]
    Start(String),
    #[error("embedded broker: cannot create topic `{topic}`: {message}")]
    Topic { topic: String, message: String },
}

/// A running embedded broker; stops when dropped.
pub struct Broker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl Broker {
    /// Starts a cluster of `brokers` brokers on loopback ports, with the
    /// default checkpoint topic (the mock cannot create it on request).
    pub fn start(brokers: i32) -> Result<Self, BrokerError> {
        let cluster = MockCluster::new(brokers.max(1)).map_err(|e| BrokerError::Start(e.to_string()))?;
        let b = Self { cluster };
        b.create_topic(crate::config::DEFAULT_CHECKPOINT_TOPIC, 1)?;
        Ok(b)
    }

    /// `host:port,…` for clients.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock does not serve the CreateTopics admin call).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        self.cluster
            .create_topic(topic, partitions.max(1), 1)
            .map_err(|e| BrokerError::Topic {
                topic: topic.into(),
                message: e.to_string(),
            })
    }

    /// Takes broker `id` (1-based) down or up, to simulate outages.
    pub fn set_broker_up(&self, id: i32, up: bool) -> Result<(), BrokerError> {
        let r = if up {
            self.cluster.broker_up(id)
        } else {
            self.cluster.broker_down(id)
        };
        r.map_err(|e| BrokerError::Start(e.to_string()))
    }

    /// Delays every response of broker `id` (1-based) by `rtt`, to simulate
    /// a slow or distant broker.
    pub fn set_round_trip(&self, id: i32, rtt: std::time::Duration) -> Result<(), BrokerError> {
        self.cluster
            .broker_round_trip_time(id, rtt)
            .map_err(|e| BrokerError::Start(e.to_string()))
    }

    /// Makes broker `id` (1-based) the leader of a topic's partition.
    pub fn set_leader(&self, topic: &str, partition: i32, id: i32) -> Result<(), BrokerError> {
        self.cluster
            .partition_leader(topic, partition, Some(id))
            .map_err(|e| BrokerError::Topic {
                topic: topic.into(),
                message: e.to_string(),
            })
    }

    /// A client config pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }
}
