//! The subscription table against a real broker: a large load with updates, tombstones and
//! invalid records; following after the load; topic setup idempotence.

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
    // id → (url, event type, secret, enabled) of the last good version.
    let mut expected: BTreeMap<String, (String, String, String, bool)> = BTreeMap::new();
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
            expected.insert(id, (url, t.to_string(), secret, enabled));
        } else if roll < 85 {
            records.push((Some(id.clone()), None));
            expected.remove(&id);
        } else {
            // Invalid versions of the same id: the last good one must survive.
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
    let sub = table.get("sub_a").expect("followed put");
    assert_eq!(
        sub.secret.expose(),
        "s1",
        "the invalid update must not replace the good one"
    );

    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(Some("sub_a".into()), None)],
    )
    .await;
    wait_for(|| table.get("sub_a").is_none()).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_setup_twice_is_harmless_and_compacts_subscriptions() {
    let c = testkit::config("setup");
    testkit::setup_topics(&c).await;
    let again = topics::setup(&c).await.unwrap();
    assert_eq!(again.len(), 9);
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
