//! Items written by the original Go RKMS (`id` + `keys`, wrapped without encryption context)
//! are served by RKMS from the same table.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use rkms_conformance::unique_name;
use rkms_core::{
    DataKey, EncryptionContext, KeyId, KeyService, KeyState, Kms, LocalKeyring, Record, Store,
    StoreError, Version,
};
use rkms_store_dynamodb::{DynamoDbConfig, DynamoDbStore};

fn endpoint() -> String {
    std::env::var("RKMS_TEST_DYNAMODB_ENDPOINT").expect(
        "RKMS_TEST_DYNAMODB_ENDPOINT is not set: start the test services with \
         `scripts/services.sh start && source .test-services/env` (or run scripts/test.sh)",
    )
}

#[tokio::test]
async fn the_originals_items_are_served_and_upgraded_only_by_compare_and_swap() {
    let mut config = DynamoDbConfig::new(unique_name("rkms_legacy_"), "us-east-1");
    config.endpoint = Some(endpoint());
    config.create_table = true;
    let store = DynamoDbStore::open(&config).await.unwrap();

    // The original wrapped one data key in every region with no encryption context.
    let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
    let regions: Vec<Arc<dyn Kms>> = vec![
        Arc::new(ring.region("us-east-1", "k1").unwrap()),
        Arc::new(ring.region("us-west-1", "k2").unwrap()),
    ];
    let key = DataKey::new(vec![7; 32]);
    let mut keys = HashMap::new();
    for kms in &regions {
        let ciphertext = kms
            .encrypt(&key, &EncryptionContext::empty())
            .await
            .unwrap();
        keys.insert(
            kms.region().to_owned(),
            AttributeValue::S(base64::engine::general_purpose::STANDARD.encode(ciphertext)),
        );
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    client
        .put_item()
        .table_name(&config.table_name)
        .item("id", AttributeValue::S("orders".into()))
        .item("keys", AttributeValue::M(keys))
        .send()
        .await
        .unwrap();

    let service = regions
        .into_iter()
        .fold(KeyService::builder(Arc::new(store.clone())), |b, k| {
            b.region(k)
        })
        .build()
        .unwrap();
    let issued = service
        .get_or_create(&KeyId::parse("orders").unwrap())
        .await
        .unwrap();
    assert_eq!(issued.key, key);
    assert!(!issued.created);

    // A legacy item is replaced only by a compare-and-set at its version, and only once.
    let id = KeyId::parse("orders").unwrap();
    let stored = store.get(&id).await.unwrap().unwrap();
    let mut upgraded = Record::decode(&stored.bytes).unwrap();
    upgraded.wrapped_without_context = false;
    let version = store
        .compare_and_swap(&id, stored.version, upgraded.encode())
        .await
        .unwrap();
    assert_ne!(version, stored.version);
    // Not 1: an item deleted and written again by a Go server, then upgraded by another RKMS
    // server, must not come back at a version a stale compare-and-set still expects.
    assert!(version.get() > 1, "an upgrade starts at a random version");
    let again = store
        .compare_and_swap(&id, Version::new(0), upgraded.encode())
        .await;
    assert!(matches!(again, Err(StoreError::PreconditionFailed { .. })));
    client
        .delete_table()
        .table_name(&config.table_name)
        .send()
        .await
        .unwrap();
}

/// A fresh table holding one item of the original Go RKMS, `orders`, whose `keys` wrap `key`
/// with no encryption context in two regions, and a service over both regions.
struct OriginalItem {
    config: DynamoDbConfig,
    client: aws_sdk_dynamodb::Client,
    service: KeyService,
}

impl OriginalItem {
    async fn new(table_prefix: &str, key: &DataKey) -> Self {
        let mut config = DynamoDbConfig::new(unique_name(table_prefix), "us-east-1");
        config.endpoint = Some(endpoint());
        config.create_table = true;
        let store = DynamoDbStore::open(&config).await.unwrap();
        let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
        let regions: Vec<Arc<dyn Kms>> = vec![
            Arc::new(ring.region("us-east-1", "k1").unwrap()),
            Arc::new(ring.region("us-west-1", "k2").unwrap()),
        ];
        let mut keys = HashMap::new();
        for kms in &regions {
            let ciphertext = kms.encrypt(key, &EncryptionContext::empty()).await.unwrap();
            keys.insert(
                kms.region().to_owned(),
                AttributeValue::S(base64::engine::general_purpose::STANDARD.encode(ciphertext)),
            );
        }
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .load()
            .await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        client
            .put_item()
            .table_name(&config.table_name)
            .item("id", AttributeValue::S("orders".into()))
            .item("keys", AttributeValue::M(keys))
            .send()
            .await
            .unwrap();
        let service = regions
            .into_iter()
            .fold(KeyService::builder(Arc::new(store)), |b, k| b.region(k))
            .build()
            .unwrap();
        Self {
            config,
            client,
            service,
        }
    }
}

#[tokio::test]
async fn an_originals_item_survives_a_rotation_which_retires_the_originals_copies() {
    let key = DataKey::new(vec![9; 32]);
    let OriginalItem {
        config,
        client,
        service,
    } = OriginalItem::new("rkms_legacy_life_", &key).await;
    let id = KeyId::parse("orders").unwrap();
    let has_originals_keys = || async {
        client
            .get_item()
            .table_name(&config.table_name)
            .key("id", AttributeValue::S("orders".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap()
            .contains_key("keys")
    };

    // Read, and upgraded on the way: Go servers still read the original's copies.
    assert_eq!(service.get_or_create(&id).await.unwrap().key, key);
    service.repair(&id).await.unwrap();
    assert!(
        has_originals_keys().await,
        "Go servers still read an unrotated id"
    );

    assert_eq!(service.rotate(&id).await.unwrap(), 2);
    assert_eq!(
        service.get_version(&id, 1).await.unwrap().key,
        key,
        "version 1 is the original's key"
    );
    assert_ne!(service.get_or_create(&id).await.unwrap().key, key);
    assert!(
        !has_originals_keys().await,
        "a Go server would hand out version 1 as current"
    );
    let state = service.schedule_deletion(&id).await.unwrap();
    assert!(matches!(state, KeyState::PendingDeletion { .. }));
    service.restore(&id).await.unwrap();
    assert_eq!(service.get_version(&id, 1).await.unwrap().key, key);
    client
        .delete_table()
        .table_name(&config.table_name)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_an_unrotated_originals_item_removes_the_originals_copies() {
    let key = DataKey::new(vec![3; 32]);
    let OriginalItem {
        config,
        client,
        service,
    } = OriginalItem::new("rkms_legacy_del_", &key).await;
    let id = KeyId::parse("orders").unwrap();
    service.schedule_deletion(&id).await.unwrap();
    let item = client
        .get_item()
        .table_name(&config.table_name)
        .key("id", AttributeValue::S("orders".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(
        !item.contains_key("keys"),
        "no copy wrapped without context outlives a deletion, nor is served by a Go server"
    );
    service.restore(&id).await.unwrap();
    assert_eq!(service.get_or_create(&id).await.unwrap().key, key);
    client
        .delete_table()
        .table_name(&config.table_name)
        .send()
        .await
        .unwrap();
}
