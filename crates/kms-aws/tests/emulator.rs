//! AwsKms against emulated AWS KMS regions (moto's server, the real AWS wire protocol).
//!
//! Needs the emulated regions: `scripts/services.sh start && source .test-services/env`
//! (the README's test command does both).

use std::time::{Duration, Instant};

use rkms_core::{DataKey, EncryptionContext, KeyId, Kms, KmsError};
use rkms_kms_aws::{AwsKms, AwsKmsConfig};

/// The first emulated region and its endpoint, from the environment the services script writes.
fn emulated_region() -> (String, String) {
    let help = "RKMS_TEST_KMS_REGIONS / RKMS_TEST_KMS_ENDPOINTS are not set: start the emulated KMS \
                regions with `scripts/services.sh start && source .test-services/env` (or run scripts/test.sh)";
    let regions = std::env::var("RKMS_TEST_KMS_REGIONS").expect(help);
    let endpoints = std::env::var("RKMS_TEST_KMS_ENDPOINTS").expect(help);
    let region = regions.split(',').next().expect(help).to_owned();
    let endpoint = endpoints.split(',').next().expect(help).to_owned();
    (region, endpoint)
}

async fn region_with_key(key_id: &str) -> AwsKms {
    let (region, endpoint) = emulated_region();
    let mut config = AwsKmsConfig::new(region, key_id);
    config.endpoint = Some(endpoint);
    AwsKms::connect(&config).await
}

async fn default_region() -> AwsKms {
    let (region, _) = emulated_region();
    region_with_key(&format!("alias/rkms-{region}")).await
}

fn ctx(id: &str) -> EncryptionContext {
    EncryptionContext::for_id(&KeyId::parse(id).unwrap())
}

#[tokio::test]
async fn generate_encrypt_and_decrypt_round_trip() {
    let kms = default_region().await;
    for len in [32, 16, 64] {
        let generated = kms
            .generate_data_key(len, &ctx("round-trip"))
            .await
            .unwrap();
        assert_eq!(generated.plaintext.len(), len);
        let back = kms
            .decrypt(&generated.ciphertext, &ctx("round-trip"))
            .await
            .unwrap();
        assert_eq!(back, generated.plaintext);
    }
    let key = DataKey::new((0..32).collect());
    let wrapped = kms.encrypt(&key, &ctx("wrap")).await.unwrap();
    assert!(!wrapped.windows(32).any(|w| w == key.expose_secret()));
    assert_eq!(kms.decrypt(&wrapped, &ctx("wrap")).await.unwrap(), key);
}

#[tokio::test]
async fn master_keys_can_be_named_by_alias_key_id_or_arn() {
    let by_alias = default_region().await;
    let described = by_alias
        .client()
        .describe_key()
        .key_id(by_alias.master_key())
        .send()
        .await
        .unwrap();
    let metadata = described.key_metadata().unwrap();
    let wrapped = by_alias
        .encrypt(&DataKey::new(vec![9; 32]), &ctx("names"))
        .await
        .unwrap();
    for name in [metadata.key_id(), metadata.arn().unwrap()] {
        let kms = region_with_key(name).await;
        assert_eq!(
            kms.decrypt(&wrapped, &ctx("names"))
                .await
                .unwrap()
                .expose_secret(),
            &[9; 32]
        );
    }
}

#[tokio::test]
async fn a_wrong_encryption_context_is_refused() {
    let kms = default_region().await;
    let generated = kms.generate_data_key(32, &ctx("mine")).await.unwrap();
    let err = kms
        .decrypt(&generated.ciphertext, &ctx("theirs"))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");
    let err = kms
        .decrypt(&generated.ciphertext, &EncryptionContext::empty())
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");
}

#[tokio::test]
async fn a_copy_wrapped_under_a_foreign_key_is_refused() {
    let kms = default_region().await;
    let foreign_key = kms
        .client()
        .create_key()
        .description("RKMS test: a foreign key")
        .send()
        .await
        .unwrap();
    let foreign = region_with_key(foreign_key.key_metadata().unwrap().key_id()).await;
    let wrapped_by_foreign = foreign
        .encrypt(&DataKey::new(vec![1; 32]), &ctx("x"))
        .await
        .unwrap();
    let err = kms
        .decrypt(&wrapped_by_foreign, &ctx("x"))
        .await
        .unwrap_err();
    // AWS answers IncorrectKeyException, a refusal. moto answers AccessDeniedException, which
    // RKMS must read as an outage, since AWS sends it for IAM denials: accept either here.
    assert!(
        matches!(err, KmsError::Refused { .. }) || err.to_string().contains("AccessDenied"),
        "{err}"
    );
    let wrapped_by_ours = kms
        .encrypt(&DataKey::new(vec![1; 32]), &ctx("x"))
        .await
        .unwrap();
    assert!(foreign.decrypt(&wrapped_by_ours, &ctx("x")).await.is_err());
}

fn timeouts(endpoint: String) -> AwsKmsConfig {
    let (region, _) = emulated_region();
    let mut config = AwsKmsConfig::new(region, "alias/anything");
    config.endpoint = Some(endpoint);
    config.connect_timeout = Duration::from_millis(300);
    config.operation_timeout = Duration::from_millis(800);
    config
}

#[tokio::test]
async fn a_refusing_endpoint_fails_fast() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kms = AwsKms::connect(&timeouts(format!("http://127.0.0.1:{port}"))).await;
    let started = Instant::now();
    let err = kms.generate_data_key(32, &ctx("x")).await.unwrap_err();
    assert!(matches!(err, KmsError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(800) + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_within_the_operation_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blackhole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = timeouts(format!("http://{addr}"));
    let kms = AwsKms::connect(&config).await;
    let started = Instant::now();
    let err = kms.decrypt(&[1, 2, 3], &ctx("x")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, KmsError::Unavailable { .. }), "{err}");
    assert!(
        waited >= config.operation_timeout,
        "gave up early: {waited:?}"
    );
    assert!(
        waited < config.operation_timeout + Duration::from_millis(500),
        "{waited:?}"
    );
    blackhole.abort();
}

/// Only a ciphertext the region will not open (wrong context, foreign key, damaged bytes) is a
/// refusal, which the core treats as a failed integrity check. A master key the region cannot
/// use (missing, disabled, pending deletion) or credentials it does not accept are an outage of
/// that region: they may end, and a stale key may answer meanwhile.
#[tokio::test]
async fn a_missing_master_key_is_an_outage_not_a_refusal() {
    let wrapped = default_region()
        .await
        .encrypt(&DataKey::new(vec![3; 32]), &ctx("missing"))
        .await
        .unwrap();
    let kms = region_with_key("alias/rkms-no-such-key").await;
    let err = kms.decrypt(&wrapped, &ctx("missing")).await.unwrap_err();
    assert!(matches!(err, KmsError::Unavailable { .. }), "{err}");
    let err = kms
        .encrypt(&DataKey::new(vec![3; 32]), &ctx("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Unavailable { .. }), "{err}");
    let err = kms
        .generate_data_key(32, &ctx("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Unavailable { .. }), "{err}");
}
