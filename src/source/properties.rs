//! Which pass-through librdkafka properties go to which client. A pipeline
//! gives one `properties` map for the source (and, unless `output.properties`
//! is set, the outputs), but driftwatch makes consumers, producers and admin
//! clients from it; librdkafka warns (CONFWARN) about, and ignores, a
//! consumer-only property on a producer and the reverse. The lists are the
//! C and P rows of librdkafka 2.12's CONFIGURATION.md (the version
//! rdkafka-sys builds); every other property applies to all clients.

use std::collections::BTreeMap;

/// What a client is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Consumer,
    Producer,
    /// Consumers that are assigned partitions and never join a group (the
    /// labels follower, checkpoint and published-output readers): consumer
    /// properties without the group-membership ones, so that a static
    /// member's `group.instance.id` is the group member's alone.
    Reader,
    /// Admin and metadata clients: neither consumer nor producer properties.
    Admin,
}

/// Properties only consumers read (scope C).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// Consumer properties about membership in a group: only the consumer that
/// subscribes gets them.
const MEMBER_ONLY: &[&str] = &[
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "max.poll.interval.ms",
];

/// Properties only producers read (scope P).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// Whether property `key` applies to a client of `role`.
pub fn applies(role: ClientRole, key: &str) -> bool {
    let consumer_only = CONSUMER_ONLY.contains(&key);
    let producer_only = PRODUCER_ONLY.contains(&key);
    match role {
        ClientRole::Consumer => !producer_only,
        ClientRole::Reader => !producer_only && !MEMBER_ONLY.contains(&key),
        ClientRole::Producer => !consumer_only,
        ClientRole::Admin => !consumer_only && !producer_only,
    }
}

/// The properties of `props` that apply to `role`.
pub fn for_role(role: ClientRole, props: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    props.iter().filter(move |(k, _)| applies(role, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_property_goes_where_it_applies() {
        let props: BTreeMap<String, String> = [
            ("fetch.wait.max.ms", "5"),
            ("linger.ms", "20"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "x"),
            ("group.instance.id", "dw-0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let keys = |role| for_role(role, &props).map(|(k, _)| k.as_str()).collect::<Vec<_>>();
        assert_eq!(
            keys(ClientRole::Consumer),
            [
                "fetch.wait.max.ms",
                "group.instance.id",
                "sasl.password",
                "security.protocol"
            ]
        );
        assert_eq!(
            keys(ClientRole::Reader),
            ["fetch.wait.max.ms", "sasl.password", "security.protocol"]
        );
        assert_eq!(
            keys(ClientRole::Producer),
            ["linger.ms", "sasl.password", "security.protocol"]
        );
        assert_eq!(keys(ClientRole::Admin), ["sasl.password", "security.protocol"]);
    }

    /// The lists match librdkafka's own table, where the crate ships it.
    #[test]
    fn lists_match_librdkafkas_configuration_table() {
        let Some(table) = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
            .and_then(|home| std::fs::read_dir(home.join("registry/src")).ok())
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("rdkafka-sys-4.10.0+2.12.1/librdkafka/CONFIGURATION.md"))
            .find_map(|p| std::fs::read_to_string(p).ok())
        else {
            return; // vendored elsewhere: nothing to compare against
        };
        let scoped = |scope: &str| -> Vec<String> {
            let mut v: Vec<String> = table
                .lines()
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split('|').map(str::trim).collect();
                    // Callbacks (`dr_cb`, `msg_order_cmp`, …) are set in code, not as strings.
                    (cols.len() > 2 && cols[1] == scope && !cols[0].contains('_') && !cols[0].contains(' '))
                        .then(|| cols[0].to_string())
                })
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let sorted = |l: &[&str]| {
            let mut v: Vec<String> = l.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(CONSUMER_ONLY), scoped("C"));
        assert_eq!(sorted(PRODUCER_ONLY), scoped("P"));
    }
}
