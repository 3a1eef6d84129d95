//! The subscription table against a real broker: a large load with updates, tombstones and
//! invalid records; following after the load; the latest record deciding, the same before and
//! after a restart; topic setup idempotence.

use mgpass_testkit as testkit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::subscriptions::loader::Loader;
use mgpass_webhooks::subscriptions::SubscriptionTable;
use mgpass_webhooks::topics::{self, SetupOutcome};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const TYPES: [&str; 4] = [
    "rewards.points_awarded",
    "cashback.processed",
    "rewards.redeemed",
    "*",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_10000_records_with_updates_tombstones_and_invalid_ones_to_the_right_final_table() {
    let c = testkit::config("table10k");
    testkit::setup_topics(&c).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // id → (url, event type, secret, enabled) of the latest version, when it is valid.
    let mut expected: BTreeMap<String, (String, String, String, bool)> = BTreeMap::new();
    // ids whose latest record is invalid (suspended).
    let mut suspended = std::collections::BTreeSet::new();
    let mut records = Vec::with_capacity(10_000);
    let mut invalid = 0u64;
    for i in 0..10_000 {
        let id = format!("sub_{}", rng.gen_range(0..3_000));
        let roll: u32 = rng.gen_range(0..100);
        if roll < 70 {
            let url = format!("https://p{}.example/hook/{i}", rng.gen_range(0..50));
            let t = TYPES[rng.gen_range(0..TYPES.len())];
            let secret = format!("secret-{i}");
            let enabled = rng.gen_bool(0.9);
            let v = serde_json::json!({"id": id, "url": url, "event_types": [t],
                "secret": secret, "enabled": enabled});
            records.push((Some(id.clone()), Some(v.to_string().into_bytes())));
            suspended.remove(&id);
            expected.insert(id, (url, t.to_string(), secret, enabled));
        } else if roll < 85 {
            records.push((Some(id.clone()), None));
            suspended.remove(&id);
            expected.remove(&id);
        } else {
            // Invalid versions of the same id: the latest record decides, so it is suspended.
            let bad = match roll % 4 {
                0 => b"{not json".to_vec(),
                1 => testkit::subscription_json(&id, "ftp://nope", &["*"], None, "s"),
                2 => testkit::subscription_json(
                    &id,
                    "https://p.example/h",
                    &["rewards.bogus"],
                    None,
                    "s",
                ),
                _ => testkit::subscription_json(&id, "https://p.example/h", &["*"], None, ""),
            };
            records.push((Some(id.clone()), Some(bad)));
            expected.remove(&id);
            suspended.insert(id);
            invalid += 1;
        }
    }
    let producer = testkit::producer();
    testkit::produce_all(&producer, &c.topics.subscriptions, &records).await;

    let table = Arc::new(SubscriptionTable::new());
    let metrics = Arc::new(Metrics::new());
    let started = std::time::Instant::now();
    let stats = Loader::new(&c, table.clone(), metrics.clone())
        .unwrap()
        .run(CancellationToken::new(), false)
        .await
        .unwrap();
    eprintln!("loaded 10,000 records in {:?}", started.elapsed());
    assert!(table.is_ready());
    assert_eq!(stats.records, 10_000);
    assert_eq!(stats.invalid, invalid);
    assert_eq!(
        metrics
            .subscription_records
            .with_label_values(&["invalid"])
            .get(),
        invalid
    );
    let actual: BTreeMap<String, (String, String, String, bool)> = table
        .snapshot()
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                (
                    s.url.to_string(),
                    s.event_types[0].clone(),
                    s.secret.expose().to_string(),
                    s.enabled,
                ),
            )
        })
        .collect();
    assert_eq!(actual.len(), expected.len());
    assert_eq!(actual, expected);
    assert_eq!(metrics.subscriptions.get(), expected.len() as i64);
    let listed: std::collections::BTreeSet<String> = table
        .invalid_snapshot()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, suspended);
    assert_eq!(metrics.subscriptions_invalid.get(), suspended.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_topic_loads_at_once_and_the_table_keeps_following() {
    let c = testkit::config("follow");
    testkit::setup_topics(&c).await;
    let table = Arc::new(SubscriptionTable::new());
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let loader = Loader::new(&c, table.clone(), metrics.clone()).unwrap();
    let task = tokio::spawn(loader.run(cancel.clone(), true));
    tokio::time::timeout(Duration::from_secs(20), table.wait_ready())
        .await
        .expect("an empty subscriptions topic must load");
    assert!(table.is_empty());

    let producer = testkit::producer();
    let good = testkit::subscription_json("sub_a", "https://a.example/h", &["*"], None, "s1");
    let bad = testkit::subscription_json("sub_a", "https://a.example/h", &["*"], None, "");
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            (Some("sub_a".into()), Some(good)),
            (Some("sub_a".into()), Some(bad)),
        ],
    )
    .await;
    wait_for(|| {
        metrics
            .subscription_records
            .with_label_values(&["invalid"])
            .get()
            == 1
    })
    .await;
    assert!(
        table.get("sub_a").is_none(),
        "an invalid latest record suspends the subscription, as it would after a restart"
    );
    assert_eq!(table.invalid("sub_a").unwrap().reason, "empty_secret");
    assert_eq!(metrics.subscriptions_invalid.get(), 1);

    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(Some("sub_a".into()), None)],
    )
    .await;
    // The gauge is set right after the table changes.
    wait_for(|| table.invalid("sub_a").is_none() && metrics.subscriptions_invalid.get() == 0).await;
    assert!(table.get("sub_a").is_none());
    assert_eq!(metrics.subscriptions_invalid.get(), 0);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Loads the topic once into a fresh table, as a (re)starting processor does.
async fn load(c: &mgpass_webhooks::config::Config) -> (Arc<SubscriptionTable>, Arc<Metrics>) {
    let table = Arc::new(SubscriptionTable::new());
    let metrics = Arc::new(Metrics::new());
    Loader::new(c, table.clone(), metrics.clone())
        .unwrap()
        .run(CancellationToken::new(), false)
        .await
        .unwrap();
    (table, metrics)
}

/// A valid version followed by an invalid one: while following, after a restart (a second
/// load of the whole topic), and after compaction would keep only the invalid one (a third
/// topic holding that record alone), the subscription is suspended, listed with its reason and
/// counted in the gauge. A later valid version brings it back everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_record_decides_the_same_before_and_after_a_restart() {
    let c = testkit::config("stayput");
    testkit::setup_topics(&c).await;
    let following = Arc::new(SubscriptionTable::new());
    let follow_metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        Loader::new(&c, following.clone(), follow_metrics.clone())
            .unwrap()
            .run(cancel.clone(), true),
    );
    tokio::time::timeout(Duration::from_secs(20), following.wait_ready())
        .await
        .expect("loaded");
    let producer = testkit::producer();
    let good = testkit::subscription_json("sub_a", "https://a.example/h", &["*"], None, "s1");
    let bad = testkit::subscription_json("sub_a", "ftp://a.example/h", &["*"], None, "s2");
    let other = testkit::subscription_json("sub_b", "https://b.example/h", &["*"], None, "s3");
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            (Some("sub_a".into()), Some(good.clone())),
            (Some("sub_b".into()), Some(other)),
            (Some("sub_a".into()), Some(bad.clone())),
        ],
    )
    .await;
    wait_for(|| {
        following.invalid("sub_a").is_some()
            && following.get("sub_b").is_some()
            && follow_metrics.subscriptions_invalid.get() == 1
    })
    .await;

    // What compaction leaves of sub_a: the invalid record alone.
    let compacted = testkit::config("stayput-compacted");
    testkit::setup_topics(&compacted).await;
    testkit::produce_all(
        &producer,
        &compacted.topics.subscriptions,
        &[(Some("sub_a".into()), Some(bad))],
    )
    .await;

    let (restarted, restart_metrics) = load(&c).await;
    let (from_compacted, compacted_metrics) = load(&compacted).await;
    for (what, table, metrics) in [
        ("following", &following, &follow_metrics),
        ("restarted", &restarted, &restart_metrics),
        ("compacted", &from_compacted, &compacted_metrics),
    ] {
        assert!(table.get("sub_a").is_none(), "{what}: sub_a suspended");
        assert!(
            table
                .matching("rewards.redeemed", None)
                .iter()
                .all(|s| s.id != "sub_a"),
            "{what}: sub_a matches nothing"
        );
        let why = table.invalid("sub_a").expect("listed as invalid");
        assert_eq!(why.reason, "bad_url", "{what}");
        assert!(
            !why.message.contains("s2"),
            "{what}: no secret in the reason"
        );
        assert_eq!(metrics.subscriptions_invalid.get(), 1, "{what}: gauge");
    }
    assert!(restarted.get("sub_b").is_some());

    // A valid version ends the suspension, before and after a restart.
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(Some("sub_a".into()), Some(good))],
    )
    .await;
    wait_for(|| {
        following.get("sub_a").is_some() && follow_metrics.subscriptions_invalid.get() == 0
    })
    .await;
    let (restarted, restart_metrics) = load(&c).await;
    for (table, metrics) in [
        (&following, &follow_metrics),
        (&restarted, &restart_metrics),
    ] {
        assert_eq!(table.get("sub_a").unwrap().secret.expose(), "s1");
        assert!(table.invalid("sub_a").is_none());
        assert_eq!(metrics.subscriptions_invalid.get(), 0);
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_setup_twice_is_harmless_and_compacts_subscriptions() {
    let c = testkit::config("setup");
    testkit::setup_topics(&c).await;
    let again = topics::setup(&c).await.unwrap();
    // Every topic of the product (events, subscriptions, three retry tiers, replay, delivery
    // log, failed, invalid, audit), each found in place.
    assert_eq!(again.len(), 10);
    assert_eq!(again.len(), topics::specs(&c).len());
    for (name, outcome) in again {
        assert_eq!(outcome, SetupOutcome::Existed, "{name}");
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
