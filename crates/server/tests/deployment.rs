//! The deployment files parse: docker-compose.yml against the Compose specification, and the
//! server configuration it mounts against the server's own parser.

use std::path::{Path, PathBuf};

use rkms_server::config::{Settings, StoreSettings};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn docker_compose_file_follows_the_compose_specification() {
    let root = repository_root();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let compose = compose_spec::Compose::options()
        .from_yaml_str(&text)
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));
    compose
        .validate_all()
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));
    let services: Vec<String> = compose.services.keys().map(ToString::to_string).collect();
    for expected in ["postgres", "redis", "etcd", "dynamodb", "rkms"] {
        assert!(
            services.iter().any(|s| s == expected),
            "service {expected} in {services:?}"
        );
    }
    assert!(
        root.join("Dockerfile").exists(),
        "the rkms service builds from the Dockerfile"
    );
    assert!(
        text.contains(r#""--appendonly", "yes", "--appendfsync", "always""#),
        "Redis runs with AOF fsynced on every write, which RKMS's Redis store requires"
    );
}

#[test]
fn the_compose_server_configuration_loads_and_ships_no_token() {
    let root = repository_root();
    let text = std::fs::read_to_string(root.join("deploy/compose.toml")).unwrap();
    let settings = Settings::from_toml(&text, Path::new("/var/lib/rkms")).unwrap();
    assert!(matches!(settings.store, StoreSettings::Postgres { .. }));
    settings
        .check_exposure()
        .expect("the compose server may listen on its network");
    // Everyone who read the repository knew a fixed token; each installation makes its own.
    assert!(
        !text.lines().any(|l| l.starts_with("token_sha256")),
        "compose.toml holds a token hash"
    );
    let published = "rkms_compose-development-token-change-me";
    for file in ["deploy/compose.toml", "docker-compose.yml", "README.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            !text.contains(published),
            "{file} still tells the old token"
        );
    }

    // The first start makes the token and keeps its hash on the data volume; later starts
    // read it.
    let volume = tempfile::tempdir().unwrap();
    let on_volume = text.replace("/var/lib/rkms", volume.path().to_str().unwrap());
    let start = || {
        let mut settings = Settings::from_toml(&on_volume, volume.path()).unwrap();
        let made = settings.load_generated_tokens().unwrap();
        (settings, made)
    };
    let (first, made) = start();
    assert_eq!(made.len(), 1, "the first start makes one token");
    let hash = rkms_server::auth::TokenHash::of(&made[0].token);
    assert_eq!(first.principals[0].tokens, [hash]);
    let (again, made) = start();
    assert!(made.is_empty(), "a later start makes none");
    assert_eq!(again.principals[0].tokens, [hash]);
}
