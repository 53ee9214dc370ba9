//! The configuration file: the original RKMS's file keeps its meaning; bad files are refused
//! with a message naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rkms_server::config::{
    ConfigError, GeneratedToken, KmsSettings, LegacyRecords, Settings, StoreSettings,
};
use rkms_server::tls::CertificateName;

/// The original Go RKMS's config.toml, verbatim (its multi-line inline table is TOML 1.1).
const ORIGINAL: &str = r#"[server]
  port = "8080"
  api_version = "v1"

[logger]
  level = "debug"

[kms]
  regions = [
    "us-east-1",
    "us-east-2",
    "us-west-1"
    ]

  key_ids = {
    us-east-1 = "alias/rkms-us-east-1",
    us-east-2 = "alias/rkms-us-east-2",
    us-west-1 = "alias/rkms-us-west-1" }
  
  data_key_size_in_bytes = 32

[dynamodb]
  region = "us-east-1"
  table_name = "rkms_keys"
  cache_expiration_in_minutes = 5
  cache_cleanup_internal_in_minutes = 10
"#;

/// A principal for files that name none: every file needs one.
const A_PRINCIPAL: &str = r#"
[[principals]]
name = "app"
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
allow = [{ ids = ["*"], operations = ["get", "create"] }]
"#;

/// Parses `text`, with [`A_PRINCIPAL`] added unless it configures principals itself.
fn parse(text: &str) -> Result<Settings, ConfigError> {
    let text = if text.contains("[[principals]]") {
        text.to_owned()
    } else {
        format!("{text}{A_PRINCIPAL}")
    };
    Settings::from_toml(&text, Path::new("/var/lib/rkms"))
}

fn refusal(text: &str) -> String {
    parse(text)
        .expect_err("the configuration must be refused")
        .to_string()
}

#[test]
fn the_original_file_means_aws_kms_in_every_region() {
    let settings = parse(ORIGINAL).unwrap();
    assert_eq!(
        settings.listen,
        "0.0.0.0:8080".parse::<SocketAddr>().unwrap(),
        "the original bound every interface"
    );
    assert_eq!(settings.key_path, "/api/v1/key");
    assert_eq!(settings.log_level, "debug");
    assert_eq!(settings.service.data_key_len, 32);
    let regions: Vec<(&str, &str)> = settings
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.key_id.as_str()))
        .collect();
    assert_eq!(
        regions,
        [
            ("us-east-1", "alias/rkms-us-east-1"),
            ("us-east-2", "alias/rkms-us-east-2"),
            ("us-west-1", "alias/rkms-us-west-1")
        ]
    );
    assert!(settings.regions.iter().all(|r| r.endpoint.is_none()));
    let KmsSettings::Aws {
        connect_timeout,
        operation_timeout,
        max_attempts,
    } = settings.kms
    else {
        panic!("the original's provider is AWS KMS");
    };
    assert_eq!(
        (
            connect_timeout.as_millis(),
            operation_timeout.as_millis(),
            max_attempts
        ),
        (1000, 2000, 2)
    );
    assert_eq!(settings.service.kms_timeout, operation_timeout);
    let StoreSettings::DynamoDb {
        table_name,
        region,
        endpoint,
        create_table,
        ..
    } = &settings.store
    else {
        panic!(
            "the original's [dynamodb] section selects the DynamoDB store: {:?}",
            settings.store
        );
    };
    assert_eq!(
        (table_name.as_str(), region.as_str()),
        ("rkms_keys", "us-east-1")
    );
    assert_eq!((endpoint, create_table), (&None, &false));
    assert_eq!(
        settings.notices.len(),
        1,
        "the cache keys are reported as having no effect"
    );
    assert!(settings.notices[0].contains("cache_expiration_in_minutes"));
}

#[test]
fn every_store_backend_is_read() {
    let store = |section: &str| parse(&format!("{LOCAL}[store]\n{section}")).unwrap().store;
    let StoreSettings::Postgres { url, schema, max_connections, timeout } =
        store("backend = \"postgres\"\nurl = \"postgres://rkms:hunter2@db/keys\"\nschema = \"rkms\"\nmax_connections = 3\ntimeout_ms = 900\n")
    else {
        panic!("postgres");
    };
    assert_eq!(
        (
            url.expose(),
            schema.as_str(),
            max_connections,
            timeout.as_millis()
        ),
        ("postgres://rkms:hunter2@db/keys", "rkms", 3, 900)
    );
    assert!(
        !format!("{url:?}").contains("hunter2"),
        "Debug hides the password"
    );
    let StoreSettings::Redis {
        prefix,
        relaxed_durability,
        replicas,
        ..
    } = store("backend = \"redis\"\nurl = \"redis://cache/\"\n")
    else {
        panic!("redis")
    };
    assert_eq!(
        (prefix.as_str(), relaxed_durability, replicas),
        ("rkms:", false, 0),
        "strict durability and no replicas unless configured"
    );
    let StoreSettings::Redis {
        relaxed_durability,
        replicas,
        ..
    } = store(
        "backend = \"redis\"\nurl = \"redis://cache/\"\ndurability = \"relaxed\"\nreplicas = 2\n",
    )
    else {
        panic!("redis")
    };
    assert_eq!((relaxed_durability, replicas), (true, 2));
    let StoreSettings::Etcd { endpoints, prefix, .. } =
        store("backend = \"etcd\"\nendpoints = [\"http://a:2379\", \"http://b:2379\"]\nprefix = \"keys/\"\n")
    else {
        panic!("etcd")
    };
    assert_eq!((endpoints.len(), prefix.as_str()), (2, "keys/"));
    let StoreSettings::DynamoDb { endpoint, create_table, legacy_records, .. } = store(
        "backend = \"dynamodb\"\ntable_name = \"t\"\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:8000\"\ncreate_table = true\n",
    ) else {
        panic!("dynamodb")
    };
    assert_eq!(
        (endpoint.as_deref(), create_table, legacy_records),
        (Some("http://127.0.0.1:8000"), true, LegacyRecords::Serve),
        "the original's items are served unless refused"
    );
    let StoreSettings::DynamoDb { legacy_records, .. } = store(
        "backend = \"dynamodb\"\ntable_name = \"t\"\nregion = \"eu-west-1\"\nlegacy_records = \"refuse\"\n",
    ) else {
        panic!("dynamodb")
    };
    assert_eq!(legacy_records, LegacyRecords::Refuse);
    let settings = parse(&format!(
        "{LOCAL}[store]\nbackend = \"redis\"\nurl = \"redis://c/\"\ntimeout_ms = 750\n"
    ))
    .unwrap();
    assert_eq!(
        settings.service.store_timeout.as_millis(),
        750,
        "the protocol follows the store's bound"
    );
}

#[test]
fn aws_endpoints_and_timeouts_are_read() {
    let settings = parse(
        r#"
        [kms]
        provider = "aws"
        regions = ["us-east-1", "us-west-1"]
        key_ids = { us-east-1 = "alias/a", us-west-1 = "arn:aws:kms:us-west-1:1:key/b" }
        timeout_ms = 700
        connect_timeout_ms = 200
        max_attempts = 1
        [kms.endpoints]
        us-east-1 = "http://127.0.0.1:4601"
        "#,
    )
    .unwrap();
    assert_eq!(
        settings.regions[0].endpoint.as_deref(),
        Some("http://127.0.0.1:4601")
    );
    assert_eq!(settings.regions[1].endpoint, None);
    assert_eq!(settings.regions[1].key_id, "arn:aws:kms:us-west-1:1:key/b");
    let KmsSettings::Aws {
        connect_timeout,
        operation_timeout,
        max_attempts,
    } = settings.kms
    else {
        panic!("aws provider");
    };
    assert_eq!(
        (
            connect_timeout.as_millis(),
            operation_timeout.as_millis(),
            max_attempts
        ),
        (200, 700, 1)
    );
    assert_eq!(settings.service.kms_timeout.as_millis(), 700);
}

#[test]
fn the_original_sections_keep_their_meaning_with_the_local_provider() {
    let text = ORIGINAL
        .split("[dynamodb]")
        .next()
        .unwrap()
        .replace(
            "data_key_size_in_bytes = 32",
            "data_key_size_in_bytes = 24\n  provider = \"local\"",
        )
        .replace("api_version = \"v1\"", "api_version = \"v2\"");
    let settings = parse(&text).unwrap();
    assert_eq!(settings.key_path, "/api/v2/key");
    assert_eq!(settings.service.data_key_len, 24);
    assert_eq!(settings.regions[0].key_id, "alias/rkms-us-east-1");
    assert!(!settings.development_mode);
    let StoreSettings::Sqlite { path, .. } = &settings.store else {
        panic!("SQLite by default");
    };
    assert_eq!(path, Path::new("/var/lib/rkms/rkms.sqlite3"));
    let KmsSettings::Local { keyring_path } = &settings.kms else {
        panic!("local provider");
    };
    assert_eq!(keyring_path, Path::new("/var/lib/rkms/keyring.json"));
}

#[test]
fn new_sections_are_read() {
    let settings = parse(
        r#"
        [server]
        host = "127.0.0.1"
        port = 9000
        request_timeout_ms = 1500
        [logger]
        level = "warning"
        format = "json"
        [kms]
        provider = "local"
        regions = ["a", "b"]
        keyring_path = "/etc/rkms/keyring.json"
        timeout_ms = 250
        [store]
        backend = "sqlite"
        path = "/srv/keys.db"
        busy_timeout_ms = 100
        max_connections = 2
        "#,
    )
    .unwrap();
    assert_eq!(
        settings.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.log_level, "warn");
    assert_eq!(settings.service.kms_timeout.as_millis(), 250);
    assert_eq!(settings.service.request_deadline.as_millis(), 1500);
    assert_eq!(
        settings.regions[1].key_id, "rkms-b",
        "local keys default to rkms-<region>"
    );
    let StoreSettings::Sqlite {
        path,
        busy_timeout,
        max_connections,
    } = &settings.store
    else {
        panic!("SQLite");
    };
    assert_eq!(
        (
            path.to_str().unwrap(),
            busy_timeout.as_millis(),
            *max_connections
        ),
        ("/srv/keys.db", 100, 2)
    );
}

const AWS: &str = "[kms]\nregions = [\"a\"]\nkey_ids = { a = \"alias/k\" }\n";
const LOCAL: &str = "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\n";

#[test]
fn unknown_keys_are_refused_by_name() {
    assert!(refusal(&format!("[server]\nprot = 8080\n{LOCAL}")).contains("prot"));
    assert!(refusal(&format!("{LOCAL}colour = \"red\"\n")).contains("colour"));
    assert!(refusal(&format!("[serverr]\n{LOCAL}")).contains("serverr"));
    assert!(refusal(&format!(
        "{LOCAL}[store]\nbackend = \"sqlite\"\npaht = \"x\"\n"
    ))
    .contains("paht"));
}

#[test]
fn invalid_values_are_refused_by_name() {
    let cases = [
        (format!("[server]\nport = \"http\"\n{LOCAL}"), "server.port"),
        (format!("[server]\nport = 70000\n{LOCAL}"), "server.port"),
        (format!("[server]\napi_version = \"v 1\"\n{LOCAL}"), "server.api_version"),
        (format!("[logger]\nlevel = \"loud\"\n{LOCAL}"), "logger.level"),
        (format!("{LOCAL}data_key_size_in_bytes = 0\n"), "kms.data_key_size_in_bytes"),
        (format!("{LOCAL}data_key_size_in_bytes = 4096\n"), "kms.data_key_size_in_bytes"),
        (format!("{LOCAL}timeout_ms = 0\n"), "kms.timeout_ms"),
        ("[kms]\nprovider = \"local\"\nregions = []\n".into(), "kms.regions"),
        ("[kms]\nprovider = \"local\"\nregions = [\"a\", \"a\"]\n".into(), "kms.regions"),
        ("[kms]\nprovider = \"local\"\nregions = [\"a b\"]\n".into(), "kms.regions"),
        ("[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkey_ids = { a = \"k\" }\n".into(), "kms.key_ids"),
        ("[kms]\nprovider = \"local\"\nregions = [\"a\"]\nkey_ids = { a = \"k\", c = \"k\" }\n".into(), "kms.key_ids"),
        ("[kms]\nregions = [\"a\"]\n".into(), "kms.key_ids"),
        ("[kms]\nprovider = \"vault\"\nregions = [\"a\"]\nkey_ids = { a = \"k\" }\n".into(), "kms.provider"),
        ("[server]\nport = 1\n".into(), "kms"),
        (format!("{LOCAL}[store]\nbackend = \"postgres\"\n"), "url"),
        (format!("{LOCAL}[store]\nbackend = \"redis\"\nurl = \"redis://c/\"\nprefix = \"\"\n"), "store.prefix"),
        (format!("{LOCAL}[store]\nbackend = \"redis\"\nurl = \"redis://c/\"\ndurability = \"everysec\"\n"), "store.durability"),
        (format!("{LOCAL}[store]\nbackend = \"postgres\"\nurl = \"x\"\ndurability = \"relaxed\"\n"), "durability"),
        (format!("{LOCAL}[store]\nbackend = \"etcd\"\nendpoints = []\n"), "store.endpoints"),
        (format!("{LOCAL}[store]\nbackend = \"etcd\"\nendpoints = [\"http://a\"]\nurl = \"x\"\n"), "url"),
        (format!("{LOCAL}[store]\nbackend = \"dynamodb\"\ntable_name = \"t\"\n"), "region"),
        (format!("{LOCAL}[store]\nbackend = \"dynamodb\"\ntable_name = \"t\"\nregion = \"x\"\nlegacy_records = \"trust\"\n"), "legacy_records"),
        (format!("{LOCAL}[store]\nbackend = \"sqlite\"\nlegacy_records = \"serve\"\n"), "legacy_records"),
        (format!("{LOCAL}[repair]\nkms_calls_per_second = 0\n"), "repair.kms_calls_per_second"),
        (format!("{LOCAL}[repair]\nmax_pending = 0\n"), "repair.max_pending"),
        (format!("{LOCAL}[repair]\nconcurrency = 0\n"), "repair.concurrency"),
        (format!("{LOCAL}[store]\nbackend = \"postgres\"\nurl = \"x\"\ntimeout_ms = 0\n"), "store.timeout_ms"),
        (format!("{LOCAL}[dynamodb]\nregion = \"x\"\ntable_name = \"t\"\ncolour = 1\n"), "colour"),
        (format!("{LOCAL}[store]\nbackend = \"floppy\"\n"), "store.backend"),
        (format!("{LOCAL}[store]\npath = \"x\"\n"), "store.backend"),
        (format!("{LOCAL}[store]\nbackend = \"sqlite\"\nmax_connections = 0\n"), "store.max_connections"),
        (format!("{LOCAL}[store]\nbackend = \"sqlite\"\n[dynamodb]\nregion = \"x\"\ntable_name = \"t\"\n"), "store"),

        (format!("{LOCAL}[kms.endpoints]\na = \"http://127.0.0.1:1\"\n"), "kms.endpoints"),
        (format!("{LOCAL}max_attempts = 2\n"), "kms.max_attempts"),
        (format!("{LOCAL}connect_timeout_ms = 2\n"), "kms.connect_timeout_ms"),
        (format!("{AWS}keyring_path = \"x\"\n"), "kms.keyring_path"),
        (format!("{AWS}max_attempts = 0\n"), "kms.max_attempts"),
        (format!("{AWS}connect_timeout_ms = 0\n"), "kms.connect_timeout_ms"),
        (format!("{AWS}[kms.endpoints]\nb = \"http://x\"\n"), "kms.endpoints"),
        (format!("{AWS}[kms.endpoints]\na = \"ftp://x\"\n"), "kms.endpoints"),
        ("[kms]\nregions = [\"a\"]\nkey_ids = { a = \"\" }\n".into(), "kms.key_ids"),
        ("this is not toml".into(), "configuration"),
    ];
    for (text, key) in cases {
        let message = refusal(&text);
        assert!(
            message.contains(key),
            "refusal of\n{text}\nshould name {key}: {message}"
        );
    }
}

#[test]
fn the_development_default_is_loopback_sqlite_and_three_local_regions() {
    let settings = Settings::development(Path::new("data"));
    assert!(settings.development_mode);
    assert_eq!(
        settings.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.key_path, "/api/v1/key");
    assert_eq!(settings.regions.len(), 3);
    let StoreSettings::Sqlite { path, .. } = &settings.store else {
        panic!("SQLite by default");
    };
    assert_eq!(path, Path::new("data/rkms.sqlite3"));
}

#[test]
fn availability_settings_are_read() {
    let settings = parse(&format!(
        "{LOCAL}min_regions = 1\nstraggler_wait_ms = 300\n[kms.hedge]\ndelay_ms = 40\n[kms.breaker]\nfailure_threshold = 5\nopen_ms = 900\n\
         [cache]\nttl_seconds = 60\nmax_entries = 10\nstale_grace_seconds = 30\n[repair]\ninterval_seconds = 7\nsweep_interval_seconds = 0\nfirst_sweep_after_seconds = 0\n"
    ))
    .unwrap();
    let s = &settings.service;
    assert_eq!(s.min_regions, 1);
    assert_eq!(
        s.straggler_wait,
        Some(std::time::Duration::from_millis(300))
    );
    assert_eq!(s.hedge.fixed, Some(std::time::Duration::from_millis(40)));
    assert_eq!(
        (s.breaker.failure_threshold, s.breaker.open_for.as_millis()),
        (5, 900)
    );
    assert_eq!(
        (s.cache.enabled, s.cache.ttl.as_secs(), s.cache.max_entries),
        (true, 60, 10)
    );
    assert_eq!(
        s.cache.stale_grace,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(s.repair.interval.as_secs(), 7);
    assert_eq!(s.repair.sweep_interval, None, "0 turns the full sweep off");
    assert_eq!(
        s.repair.first_sweep_after, None,
        "0: no early sweep after start"
    );

    let defaults = parse(LOCAL).unwrap().service;
    assert_eq!(defaults.min_regions, 2, "two of the regions by default");
    assert!(defaults.cache.enabled && defaults.cache.stale_grace.is_none());
    assert_eq!(defaults.straggler_wait, None, "the generator's hedge delay");
    assert_eq!(
        defaults.repair.first_sweep_after,
        Some(std::time::Duration::from_secs(60))
    );
    let single = parse("[kms]\nprovider = \"local\"\nregions = [\"a\"]\n")
        .unwrap()
        .service;
    assert_eq!(single.min_regions, 1, "a single region is its own quorum");
}

#[test]
fn invalid_availability_settings_are_refused_by_name() {
    let cases = [
        (format!("{LOCAL}min_regions = 3\n"), "kms.min_regions"),
        (format!("{LOCAL}min_regions = 0\n"), "kms.min_regions"),
        (
            format!("{LOCAL}timeout_ms = 500\nstraggler_wait_ms = 501\n"),
            "kms.straggler_wait_ms",
        ),
        (
            format!("{LOCAL}[kms.hedge]\nfloor_ms = 500\ncap_ms = 100\n"),
            "kms.hedge.floor_ms",
        ),
        (
            format!("{LOCAL}[kms.hedge]\nfactor = 0\n"),
            "kms.hedge.factor",
        ),
        (format!("{LOCAL}[kms.hedge]\nspeed = 1\n"), "speed"),
        (
            format!("{LOCAL}[kms.breaker]\nfailure_threshold = 0\n"),
            "kms.breaker.failure_threshold",
        ),
        (
            format!("{LOCAL}[cache]\nttl_seconds = 0\n"),
            "cache.ttl_seconds",
        ),
        (
            format!("{LOCAL}[cache]\nmax_entries = 0\n"),
            "cache.max_entries",
        ),
        (format!("{LOCAL}[cache]\nsize = 1\n"), "size"),
        (
            format!("{LOCAL}[repair]\ninterval_seconds = 0\n"),
            "repair.interval_seconds",
        ),
    ];
    for (text, key) in cases {
        let message = refusal(&text);
        assert!(
            message.contains(key),
            "refusal of\n{text}\nshould name {key}: {message}"
        );
    }
}

#[test]
fn the_audit_log_goes_to_a_file_or_standard_output() {
    use rkms_server::audit::AuditTarget;
    let default = parse(LOCAL).unwrap().audit;
    assert_eq!(
        default,
        AuditTarget::File(Path::new("/var/lib/rkms/audit.log").to_owned())
    );
    let file = parse(&format!(
        "{LOCAL}[audit]\npath = \"/var/log/rkms/audit.log\"\n"
    ))
    .unwrap()
    .audit;
    assert_eq!(
        file,
        AuditTarget::File(Path::new("/var/log/rkms/audit.log").to_owned())
    );
    assert_eq!(
        parse(&format!("{LOCAL}[audit]\npath = \"-\"\n"))
            .unwrap()
            .audit,
        AuditTarget::Stdout
    );
    assert!(refusal(&format!("{LOCAL}[audit]\nfile = \"x\"\n")).contains("file"));
}

#[test]
fn the_audit_log_syncs_as_configured_and_always_needs_a_file() {
    use rkms_server::audit::AuditSync;
    let sync = |section: &str| parse(&format!("{LOCAL}{section}")).unwrap().audit_sync;
    assert_eq!(sync(""), AuditSync::Os);
    assert_eq!(sync("[audit]\nsync = \"os\"\n"), AuditSync::Os);
    assert_eq!(sync("[audit]\nsync = \"always\"\n"), AuditSync::Always);
    let message = refusal(&format!(
        "{LOCAL}[audit]\npath = \"-\"\nsync = \"always\"\n"
    ));
    assert!(message.contains("audit.sync"), "{message}");
    let message = refusal(&format!("{LOCAL}[audit]\nsync = \"sometimes\"\n"));
    assert!(message.contains("always"), "{message}");
}

#[test]
fn audit_checkpoints_are_signed_only_with_a_key_and_at_sane_frequencies() {
    use rkms_server::audit::Checkpoints;
    let unsigned = parse(LOCAL).unwrap();
    assert_eq!(unsigned.audit_signing_key, None);
    assert_eq!(
        unsigned.audit_checkpoints,
        Checkpoints {
            every_lines: 1000,
            interval: std::time::Duration::from_secs(60)
        }
    );
    let signed = parse(&format!(
        "{LOCAL}[audit]\nsigning_key = \"/etc/rkms/audit.key\"\ncheckpoint_lines = 50\n\
         checkpoint_interval_seconds = 5\n"
    ))
    .unwrap();
    assert_eq!(
        signed.audit_signing_key.as_deref(),
        Some(Path::new("/etc/rkms/audit.key"))
    );
    assert_eq!(
        signed.audit_checkpoints,
        Checkpoints {
            every_lines: 50,
            interval: std::time::Duration::from_secs(5)
        }
    );
    for (section, key) in [
        ("checkpoint_lines = 5", "audit.checkpoint_lines"),
        (
            "checkpoint_interval_seconds = 5",
            "audit.checkpoint_interval_seconds",
        ),
        (
            "signing_key = \"k\"\ncheckpoint_lines = 0",
            "audit.checkpoint_lines",
        ),
        (
            "signing_key = \"k\"\ncheckpoint_interval_seconds = 0",
            "audit.checkpoint_interval_seconds",
        ),
    ] {
        let message = refusal(&format!("{LOCAL}[audit]\n{section}\n"));
        assert!(message.contains(key), "{section}: {message}");
    }
}

/// `[kms]` for the AWS provider with one region, `extra` keys and its endpoint.
fn aws_with_endpoint(endpoint: &str, extra: &str) -> String {
    format!("{AWS}{extra}[kms.endpoints]\na = {endpoint:?}\n")
}

#[test]
fn plain_http_kms_endpoints_beyond_loopback_are_refused_unless_allowed() {
    for safe in [
        "http://127.0.0.1:4566",
        "http://127.8.0.1:4566/",
        "http://localhost:4566",
        "http://[::1]:4566",
        "https://kms.internal.example",
        "https://10.0.0.5:4566",
    ] {
        let settings = parse(&aws_with_endpoint(safe, "")).unwrap();
        assert_eq!(settings.regions[0].endpoint.as_deref(), Some(safe));
    }
    for remote in [
        "http://10.0.0.5:4566",
        "http://kms.internal.example",
        "http://localhost.example.com:4566",
        "http://user@10.0.0.5/",
        "http://[2001:db8::1]:4566",
    ] {
        let message = refusal(&aws_with_endpoint(remote, ""));
        assert!(
            message.contains("kms.endpoints") && message.contains("allow_insecure_endpoints"),
            "{remote}: {message}"
        );
        let allowed = parse(&aws_with_endpoint(
            remote,
            "allow_insecure_endpoints = true\n",
        ))
        .unwrap_or_else(|e| panic!("{remote} with allow_insecure_endpoints: {e}"));
        assert!(
            allowed.notices.iter().any(|n| n.contains(remote)),
            "a warning names {remote}: {:?}",
            allowed.notices
        );
    }
    let message = refusal(&format!("{LOCAL}allow_insecure_endpoints = true\n"));
    assert!(
        message.contains("kms.allow_insecure_endpoints"),
        "{message}"
    );
}

#[test]
fn the_originals_cache_keys_are_explained_by_what_cache_does() {
    let notice = parse(ORIGINAL).unwrap().notices.remove(0);
    assert!(!notice.contains("no plaintext key cache"), "{notice}");
    for said in [
        "[cache]",
        "ttl_seconds",
        "max_entries",
        "stale_grace_seconds",
        "300",
    ] {
        assert!(
            notice.contains(said),
            "the notice should mention {said}: {notice}"
        );
    }
}

const LOCAL_KMS: &str = "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\n";
const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

#[test]
fn a_file_without_principals_is_refused() {
    let error = Settings::from_toml(ORIGINAL, Path::new("/var/lib/rkms"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("no [[principals]]"), "{error}");
}

#[test]
fn principals_policies_and_limits_are_read() {
    let settings = parse(&format!(
        r#"{LOCAL_KMS}
[server]
host = "127.0.0.1"
allowed_hosts = ["rkms.internal", "10.0.0.5"]
[server.tls]
certificate = "/etc/rkms/server.crt"
private_key = "/etc/rkms/server.key"
client_ca = "/etc/rkms/clients.crt"
reload_interval_seconds = 5

[limits]
max_uri_bytes = 2048
max_header_bytes = 8192
header_read_timeout_seconds = 3
write_timeout_seconds = 4
max_connection_age_seconds = 60
max_connections = 64
rate_limit_per_second = 10
failed_auth_per_minute = 5

[[principals]]
name = "orders"
token_sha256 = ["{HASH_A}", "{}"]
allow = [
  {{ ids = ["orders/*"], operations = ["get", "create"] }},
  {{ ids = ["shared/*"], operations = ["get"] }},
]

[[principals]]
name = "billing"
client_certificate_names = ["dns:Billing.Internal", "uri:spiffe://corp/billing", "cn:Billing"]
rate_limit_per_second = 0
allow = [{{ ids = ["billing/*"], operations = ["create"] }}]

[[principals]]
name = "prometheus"
token_sha256 = ["{HASH_B}"]
generated_token_file = "/var/lib/rkms/prometheus.token-sha256"
metrics = true
rate_limit_burst = 5
"#,
        HASH_A.to_uppercase().replace('9', "8")
    ))
    .unwrap();
    let tls = settings.tls.as_ref().unwrap();
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(Path::new("/etc/rkms/clients.crt"))
    );
    assert_eq!(tls.reload_interval.as_secs(), 5);
    assert_eq!(settings.limits.max_uri_bytes, 2048);
    assert_eq!(settings.limits.max_header_bytes, 8192);
    assert_eq!(settings.limits.header_read_timeout.as_secs(), 3);
    assert_eq!(settings.limits.write_timeout.as_secs(), 4);
    assert_eq!(settings.limits.max_connection_age.as_secs(), 60);
    assert_eq!(settings.limits.max_connections, 64);
    assert_eq!(
        settings.limits.max_connections_per_address, 16,
        "a quarter of max_connections unless configured"
    );
    let names: Vec<&str> = settings
        .principals
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["orders", "billing", "prometheus"]);
    let [orders, billing, prometheus] = &settings.principals[..] else {
        unreachable!()
    };
    assert_eq!(orders.tokens.len(), 2);
    let rate = orders.rate_limit.unwrap();
    assert_eq!((rate.per_second.get(), rate.burst.get()), (10, 20));
    let id = |s| rkms_core::KeyId::parse(s).unwrap();
    let allowed = orders.policy.allowed(&id("shared/x"));
    assert!(allowed.get && !allowed.create);
    assert!(orders.policy.allowed(&id("billing/x")).is_empty());
    assert_eq!(
        billing.certificate_names,
        [
            CertificateName::Dns("billing.internal".into()),
            CertificateName::Uri("spiffe://corp/billing".into()),
            CertificateName::CommonName("Billing".into()),
        ]
    );
    assert_eq!(settings.failed_auth_per_minute.map(|n| n.get()), Some(5));
    assert!(settings.allowed_hosts.allows(Some(b"rkms.internal:8443")));
    assert!(!settings.allowed_hosts.allows(Some(b"other.internal")));
    assert_eq!(
        settings.generated_tokens,
        [GeneratedToken {
            principal: "prometheus".into(),
            file: "/var/lib/rkms/prometheus.token-sha256".into(),
        }]
    );
    assert!(billing.rate_limit.is_none(), "0 turns the limit off");
    assert!(prometheus.metrics && prometheus.policy.is_empty());
    let rate = prometheus.rate_limit.unwrap();
    assert_eq!((rate.per_second.get(), rate.burst.get()), (10, 5));
}

#[test]
fn the_failed_authentication_budget_defaults_to_60_a_minute_and_0_turns_it_off() {
    let budget = |extra: &str| {
        parse(&format!("{LOCAL_KMS}{extra}"))
            .unwrap()
            .failed_auth_per_minute
            .map(|n| n.get())
    };
    assert_eq!(budget(""), Some(60));
    assert_eq!(budget("[limits]\nfailed_auth_per_minute = 0\n"), None);
    let development = Settings::development(Path::new("data"));
    assert_eq!(
        development.failed_auth_per_minute.map(|n| n.get()),
        Some(60)
    );
    assert!(development.allowed_hosts.allows(Some(b"localhost:8080")));
    assert!(!development
        .allowed_hosts
        .allows(Some(b"attacker.example:8080")));
}

/// One `[[principals]]` entry named `name` with `lines`.
fn principal(name: &str, lines: &str) -> String {
    format!("[[principals]]\nname = \"{name}\"\n{lines}\n")
}

const ALLOW_GET: &str = "allow = [{ ids = [\"*\"], operations = [\"get\"] }]";

/// A `[server.tls]` section that verifies client certificates.
const TLS_WITH_CLIENT_CA: &str =
    "[server.tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\nclient_ca = \"ca.pem\"\n";

#[test]
fn bad_principals_are_refused_with_the_reason() {
    let token = |hash: &str| format!("token_sha256 = [\"{hash}\"]\n{ALLOW_GET}");
    let anonymous = format!("anonymous = true\n{ALLOW_GET}");
    let cases = [
        (principal("a", ALLOW_GET), "needs token_sha256"),
        (principal("a", &token("abc")), "64 hexadecimal digits"),
        (
            principal("a", &format!("token_sha256 = [\"{HASH_A}\"]")),
            "allowed nothing",
        ),
        (
            principal(
                "a",
                &format!("token_sha256 = [\"{HASH_A}\"]\nallow = [{{ ids = [\"a b\"], operations = [\"get\"] }}]"),
            ),
            "no id can contain",
        ),
        (
            principal(
                "a",
                &format!("token_sha256 = [\"{HASH_A}\"]\nallow = [{{ ids = [\"*\"], operations = [\"destroy\"] }}]"),
            ),
            "unknown operation",
        ),
        (principal("local-admin", &token(HASH_A)), "reserved"),
        (
            principal("a", &token(HASH_A)) + &principal("b", &token(HASH_A)),
            "configured twice",
        ),
        (
            principal("a", &token(HASH_A)) + &principal("a", &token(HASH_B)),
            "used twice",
        ),
        (
            principal("a", &anonymous) + &principal("b", &anonymous),
            "already the anonymous principal",
        ),
        (
            principal("a", &format!("anonymous = true\n{}", token(HASH_A))),
            "takes no tokens",
        ),
        (
            principal(
                "a",
                &format!("client_certificate_names = [\"dns:a.internal\"]\n{ALLOW_GET}"),
            ),
            "client_ca",
        ),
        (
            format!("{TLS_WITH_CLIENT_CA}{}", principal("a", &format!("client_certificate_names = [\"spiffe://corp/a\"]\n{ALLOW_GET}"))),
            "needs its kind: \"uri:spiffe://corp/a\"",
        ),
        (
            format!("{TLS_WITH_CLIENT_CA}{}", principal("a", &format!("client_certificate_names = [\"a.internal\"]\n{ALLOW_GET}"))),
            "needs its kind: \"dns:a.internal\"",
        ),
        (
            format!(
                "{TLS_WITH_CLIENT_CA}{}{}",
                principal("a", &format!("client_certificate_names = [\"dns:a.internal\"]\n{ALLOW_GET}")),
                principal("b", &format!("client_certificate_names = [\"dns:A.Internal\"]\n{ALLOW_GET}")),
            ),
            "\"dns:a.internal\" is used twice",
        ),
        (
            principal("a", &format!("anonymous = true\ngenerated_token_file = \"a.sha256\"\n{ALLOW_GET}")),
            "takes no tokens",
        ),
        (
            principal("a", &format!("generated_token_file = \"t.sha256\"\n{ALLOW_GET}"))
                + &principal("b", &format!("generated_token_file = \"t.sha256\"\n{ALLOW_GET}")),
            "generated_token_file t.sha256 is used twice",
        ),
        (
            format!("[server]\nallowed_hosts = [\"rkms.internal:8443\"]\n{}", principal("a", &token(HASH_A))),
            "server.allowed_hosts",
        ),
        (principal("a b", &token(HASH_A)), "1 to 64 letters"),
        (principal("a", "token = \"plain\""), "unknown field"),
        (
            "[limits]\nmax_connections = 0\n".to_owned(),
            "limits.max_connections",
        ),
    ];
    for (section, expected) in cases {
        let error = refusal(&format!("{LOCAL_KMS}{section}"));
        assert!(error.contains(expected), "{section}\n=> {error}");
    }
}

#[test]
fn plain_http_beyond_loopback_needs_an_explicit_allowance() {
    let exposed = |extra: &str| {
        let mut settings =
            parse(&format!("[server]\nhost = \"0.0.0.0\"\n{extra}{LOCAL_KMS}")).unwrap();
        settings.listen.set_ip("10.0.0.5".parse().unwrap());
        settings.check_exposure()
    };
    let error = exposed("").unwrap_err().to_string();
    assert!(error.contains("allow_insecure_http"), "{error}");
    let warnings = exposed("allow_insecure_http = true\n").unwrap();
    assert!(warnings[0].contains("plain HTTP"), "{warnings:?}");
    let tls = "[server.tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n";
    assert!(exposed(tls).unwrap().is_empty());

    let mut loopback = parse(LOCAL_KMS).unwrap();
    loopback.listen = "127.0.0.1:8080".parse().unwrap();
    assert!(loopback.check_exposure().unwrap().is_empty());

    let mut development = Settings::development(Path::new("/tmp/rkms"));
    assert!(development.check_exposure().is_ok());
    assert!(development.principals[0].anonymous);
    development.listen = "0.0.0.0:8080".parse().unwrap();
    let error = development.check_exposure().unwrap_err().to_string();
    assert!(error.contains("loopback only"), "{error}");
}

/// Every duration setting, in the unit its key names.
const DURATION_KEYS: [(&str, &str); 16] = [
    ("limits", "header_read_timeout_seconds"),
    ("limits", "write_timeout_seconds"),
    ("limits", "max_connection_age_seconds"),
    ("cache", "ttl_seconds"),
    ("cache", "stale_grace_seconds"),
    ("repair", "interval_seconds"),
    ("repair", "sweep_interval_seconds"),
    ("kms.hedge", "delay_ms"),
    ("kms.hedge", "floor_ms"),
    ("kms.hedge", "cap_ms"),
    ("kms.breaker", "open_ms"),
    ("store", "busy_timeout_ms"),
    ("kms", "timeout_ms"),
    ("server.tls", "reload_interval_seconds"),
    ("store", "timeout_ms"),
    ("audit", "checkpoint_interval_seconds"),
];

fn with_duration(section: &str, key: &str, value: u64) -> String {
    match section {
        "kms" => format!("{LOCAL}{key} = {value}\n"),
        "store" if key == "timeout_ms" => format!(
            "{LOCAL}[store]\nbackend = \"postgres\"\nurl = \"postgres://db/k\"\n{key} = {value}\n"
        ),
        "store" => format!("{LOCAL}[store]\nbackend = \"sqlite\"\n{key} = {value}\n"),
        "server.tls" => format!(
            "[server.tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n{key} = {value}\n{LOCAL}"
        ),
        "audit" => format!("{LOCAL}[audit]\nsigning_key = \"k.pem\"\n{key} = {value}\n"),
        _ => format!("{LOCAL}[{section}]\n{key} = {value}\n"),
    }
}

proptest::proptest! {
    /// A duration too long to add to a clock reading once panicked every connection: every
    /// duration is either accepted at a sane size or refused at start with its key named.
    #[test]
    fn every_duration_is_bounded_or_refused_by_name(index in 0..DURATION_KEYS.len(), value in proptest::prelude::any::<u64>()) {
        let (section, key) = DURATION_KEYS[index];
        let text = with_duration(section, key, value);
        match parse(&text) {
            Ok(settings) => {
                let limit = std::time::Duration::from_secs(30 * 24 * 3600);
                proptest::prop_assert!(settings.limits.header_read_timeout <= limit);
                proptest::prop_assert!(settings.limits.write_timeout <= limit);
                proptest::prop_assert!(settings.limits.max_connection_age <= limit);
                proptest::prop_assert!(settings.service.cache.ttl <= limit);
                proptest::prop_assert!(settings.service.cache.stale_grace.is_none_or(|g| g <= limit));
                proptest::prop_assert!(settings.service.repair.interval <= limit);
                proptest::prop_assert!(settings.service.repair.sweep_interval.is_none_or(|g| g <= limit));
                proptest::prop_assert!(settings.service.breaker.open_for <= limit);
                proptest::prop_assert!(settings.service.kms_timeout <= limit);
                proptest::prop_assert!(settings.service.store_timeout <= limit);
                proptest::prop_assert!(settings.audit_checkpoints.interval <= limit);
            }
            Err(e) => {
                let message = e.to_string();
                proptest::prop_assert!(message.contains(key), "{} refused without naming it: {}", key, message);
            }
        }
    }
}

#[test]
fn an_overflowing_header_timeout_is_refused_by_name() {
    let message = refusal(&format!(
        "{LOCAL}[limits]\nheader_read_timeout_seconds = 18446744073709551615\n"
    ));
    assert!(
        message.contains("limits.header_read_timeout_seconds"),
        "{message}"
    );
}

#[test]
fn a_principals_create_rate_is_read_apart_from_its_request_rate() {
    let settings = parse(&format!(
        "{LOCAL_KMS}\n{}{}",
        principal(
            "creator",
            &format!("token_sha256 = [\"{HASH_A}\"]\ncreate_rate_per_second = 2\n{ALLOW_GET}")
        ),
        principal(
            "reader",
            &format!("token_sha256 = [\"{HASH_B}\"]\n{ALLOW_GET}")
        ),
    ))
    .unwrap();
    let [creator, reader] = &settings.principals[..] else {
        unreachable!()
    };
    let rate = creator.create_rate.unwrap();
    assert_eq!((rate.per_second.get(), rate.burst.get()), (2, 4));
    assert!(
        reader.create_rate.is_none(),
        "no create limit unless configured"
    );
}

/// Every size and count setting: where it goes, and the range it is accepted in (README,
/// Configuration). Everything outside is refused with the key named.
const SIZE_KEYS: [(&str, &str, u64, u64); 23] = [
    ("limits", "max_uri_bytes", 1, 65_536),
    ("limits", "max_header_bytes", 1, 1_048_576),
    ("limits", "max_connections", 1, 100_000),
    ("limits", "max_connections_per_address", 0, 100_000),
    ("limits", "rate_limit_per_second", 0, 1_000_000),
    ("limits", "rate_limit_burst", 1, 1_000_000),
    ("principal", "rate_limit_per_second", 0, 1_000_000),
    ("principal", "rate_limit_burst", 1, 1_000_000),
    ("principal", "create_rate_per_second", 0, 1_000_000),
    ("principal", "create_rate_burst", 1, 1_000_000),
    ("server", "port", 1, 65_535),
    ("kms", "data_key_size_in_bytes", 1, 1024),
    ("kms", "min_regions", 1, 2),
    ("aws", "max_attempts", 1, 5),
    ("kms.hedge", "factor", 1, 1000),
    ("kms.breaker", "failure_threshold", 1, 1000),
    ("cache", "max_entries", 1, 10_000_000),
    ("repair", "max_pending", 1, 10_000_000),
    ("repair", "kms_calls_per_second", 1, 100_000),
    ("repair", "concurrency", 1, 1000),
    ("store", "max_connections", 1, 1000),
    ("redis", "replicas", 0, 100),
    ("audit", "checkpoint_lines", 1, 1_000_000),
];

fn with_size(section: &str, key: &str, value: u64) -> String {
    match section {
        "kms" => format!("{LOCAL}{key} = {value}\n"),
        "aws" => format!("{AWS}{key} = {value}\n"),
        "server" => format!("[server]\n{key} = {value}\n{LOCAL}"),
        "principal" => format!(
            "{LOCAL}{}",
            principal(
                "p",
                &format!("{key} = {value}\nanonymous = true\n{ALLOW_GET}")
            )
        ),
        "store" => format!(
            "{LOCAL}[store]\nbackend = \"postgres\"\nurl = \"postgres://db/k\"\n{key} = {value}\n"
        ),
        "redis" => format!(
            "{LOCAL}[store]\nbackend = \"redis\"\nurl = \"redis://cache/\"\n{key} = {value}\n"
        ),
        "audit" => format!("{LOCAL}[audit]\nsigning_key = \"k.pem\"\n{key} = {value}\n"),
        _ => format!("{LOCAL}[{section}]\n{key} = {value}\n"),
    }
}

proptest::proptest! {
    /// A connection limit past what a semaphore holds once panicked the server after it
    /// listened: every size and count is accepted exactly within its documented range, and
    /// refused at start with its key named outside it.
    #[test]
    fn every_size_is_bounded_or_refused_by_name(
        index in 0..SIZE_KEYS.len(),
        pick in 0..5u8,
        any in proptest::prelude::any::<u64>(),
    ) {
        let (section, key, min, max) = SIZE_KEYS[index];
        let value = match pick {
            0 => 0,
            1 => max,
            2 => max + 1,
            3 => any % (2 * max + 2),
            _ => any,
        };
        let text = with_size(section, key, value);
        match parse(&text) {
            Ok(settings) => {
                proptest::prop_assert!((min..=max).contains(&value), "{} = {} was accepted", key, value);
                proptest::prop_assert!(settings.limits.read_buffer_bytes() <= 4 * 1_048_576);
            }
            Err(e) => {
                let message = e.to_string();
                proptest::prop_assert!(!(min..=max).contains(&value), "{} = {} was refused: {}", key, value, message);
                proptest::prop_assert!(message.contains(key), "{} refused without naming it: {}", key, message);
            }
        }
    }
}

#[test]
fn a_connection_limit_no_semaphore_holds_is_refused_by_name() {
    let message = refusal(&format!(
        "{LOCAL}[limits]\nmax_connections = 9223372036854775807\n"
    ));
    assert!(message.contains("limits.max_connections"), "{message}");
    assert!(message.contains("at most 100000"), "{message}");
}

#[test]
fn a_health_port_is_read_and_must_differ_from_the_key_port() {
    let settings = parse(&format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 8080\nhealth_port = \"8081\"\n{LOCAL}"
    ))
    .unwrap();
    assert_eq!(
        settings.health_listen,
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert!(refusal(&format!(
        "[server]\nport = 8080\nhealth_port = 8080\n{LOCAL}"
    ))
    .contains("server.health_port"));
    assert!(
        refusal(&format!("[server]\nhealth_port = 70000\n{LOCAL}")).contains("server.health_port")
    );
}

#[test]
fn the_lifecycle_section_sets_the_window_and_warns_of_a_short_one() {
    let local = "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\n";
    let defaults = parse(local).unwrap();
    assert_eq!(
        defaults.service.lifecycle.deletion_window,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert!(!defaults.service.lifecycle.check_state_on_hit);
    assert!(!defaults
        .notices
        .iter()
        .any(|n| n.contains("deletion_window")));

    let short = parse(&format!(
        "{local}[lifecycle]\ndeletion_window_seconds = 2\ncheck_state_on_hit = true\n"
    ))
    .unwrap();
    assert_eq!(
        short.service.lifecycle.deletion_window,
        Duration::from_secs(2)
    );
    assert!(short.service.lifecycle.check_state_on_hit);
    assert!(
        short
            .notices
            .iter()
            .any(|n| n.contains("deletion_window_seconds is 2")),
        "{:?}",
        short.notices
    );
    for (value, expected) in [("0", "greater than zero"), ("999999999999", "at most")] {
        let message = refusal(&format!(
            "{local}[lifecycle]\ndeletion_window_seconds = {value}\n"
        ));
        assert!(
            message.contains("lifecycle.deletion_window_seconds") && message.contains(expected),
            "{message}"
        );
    }
    assert!(refusal(&format!("{local}[lifecycle]\nwindow = 3\n")).contains("window"));
}

#[test]
fn previous_key_ids_name_keys_a_region_may_still_decrypt_under() {
    let base = "[kms]\nregions = [\"us-east-1\", \"us-west-1\"]\n\
                key_ids = { us-east-1 = \"alias/new\", us-west-1 = \"alias/west\" }\n";
    let settings = parse(&format!(
        "{base}previous_key_ids = {{ us-east-1 = [\"alias/old\", \"arn:aws:kms:us-east-1:1:key/x\"] }}\n"
    ))
    .unwrap();
    assert_eq!(
        settings.regions[0].previous_key_ids,
        ["alias/old", "arn:aws:kms:us-east-1:1:key/x"]
    );
    assert!(settings.regions[1].previous_key_ids.is_empty());
    for (previous, expected) in [
        ("{ eu-west-1 = [\"alias/old\"] }", "not in kms.regions"),
        ("{ us-east-1 = [\"alias/new\"] }", "not its current key"),
        ("{ us-east-1 = [\"alias/a\", \"alias/a\"] }", "distinct"),
        ("{ us-east-1 = [\"\"] }", "not empty"),
    ]
    .map(|(p, e)| (p.to_owned(), e))
    .into_iter()
    .chain([
        (
            format!(
                "{{ us-east-1 = [{}] }}",
                (0..17)
                    .map(|i| format!("\"alias/{i}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "at most 16 previous keys",
        ),
        (
            format!("{{ us-east-1 = [\"{}\"] }}", "a".repeat(2049)),
            "at most 2048 bytes",
        ),
    ]) {
        let message = refusal(&format!("{base}previous_key_ids = {previous}\n"));
        assert!(
            message.contains("kms.previous_key_ids") && message.contains(expected),
            "{previous}: {message}"
        );
    }
}

#[test]
fn removed_regions_name_only_regions_taken_out() {
    let base = "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\n";
    let settings = parse(&format!("{base}removed_regions = [\"c\"]\n")).unwrap();
    assert_eq!(settings.service.removed_regions, ["c"]);
    let message = refusal(&format!("{base}removed_regions = [\"b\"]\n"));
    assert!(
        message.contains("kms.removed_regions") && message.contains("still in kms.regions"),
        "{message}"
    );
}
