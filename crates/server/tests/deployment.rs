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
fn the_compose_server_configuration_loads() {
    let text = std::fs::read_to_string(repository_root().join("deploy/compose.toml")).unwrap();
    let settings = Settings::from_toml(&text, Path::new("/var/lib/rkms")).unwrap();
    assert!(matches!(settings.store, StoreSettings::Postgres { .. }));
    settings
        .check_exposure()
        .expect("the compose server may listen on its network");
    let token = "rkms_compose-development-token-change-me";
    assert!(
        text.contains(token),
        "the file tells users the development token"
    );
    let hash = rkms_server::auth::TokenHash::of(token).to_hex();
    assert!(settings.principals[0].tokens[0].to_hex() == hash);
}
