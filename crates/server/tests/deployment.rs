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

/// Runs `rkms-server check-config` on `config` with one token principal added.
fn check_config(dir: &Path, config: &str) -> std::process::Output {
    let path = dir.join("rkms.toml");
    let principal = format!(
        "[[principals]]\nname = \"app\"\ntoken_sha256 = [\"{}\"]\n\
         allow = [{{ ids = [\"*\"], operations = [\"get\"] }}]\n",
        "0f".repeat(32)
    );
    std::fs::write(&path, format!("{config}{principal}")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["check-config", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn check_config_prints_the_resolved_settings_without_secrets_or_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let valid = "[server]\nallow_insecure_http = true\n\
         [store]\nbackend = \"postgres\"\nurl = \"postgres://rkms:hunter2-secret@db:5432/rkms\"\n\
         [kms]\nprovider = \"aws\"\nregions = [\"us-east-1\", \"us-east-2\"]\n\
         key_ids = { us-east-1 = \"alias/a\", us-east-2 = \"alias/b\" }\n";
    let output = check_config(dir.path(), valid);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.contains("Postgres") && stdout.contains("us-east-2"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter2"),
        "the store password is shown: {stdout}"
    );
    assert!(
        !dir.path().join("keys.db").exists() && std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "check-config made files"
    );

    // Plain HTTP beyond loopback and TLS files that do not exist: both named, exit 2.
    let broken = "[server.tls]\ncertificate = \"/nonexistent/server.crt\"\n\
         private_key = \"/nonexistent/server.key\"\n\
         [audit]\nsigning_key = \"/nonexistent/audit.key\"\n\
         [kms]\nprovider = \"local\"\nregions = [\"a\"]\n";
    let output = check_config(dir.path(), broken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr.contains("/nonexistent/server.crt"), "{stderr}");
    assert!(stderr.contains("signing_key"), "{stderr}");
    assert!(output.stdout.is_empty());

    // What start-up refuses only once it reads other files: an audit log it cannot open, a
    // token file holding no hash, a keyring others may read. Nothing is made or changed.
    let token_file = dir.path().join("garbage.token-sha256");
    std::fs::write(&token_file, "garbage").unwrap();
    let keyring = dir.path().join("keyring.json");
    std::fs::write(&keyring, "{}").unwrap();
    std::fs::set_permissions(
        &keyring,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let elsewhere = format!(
        "[audit]\npath = \"/proc/rkms/audit.log\"\n\
         [kms]\nprovider = \"local\"\nregions = [\"a\"]\nkeyring_path = {keyring:?}\n\
         [[principals]]\nname = \"made\"\ngenerated_token_file = {token_file:?}\n\
         allow = [{{ ids = [\"*\"], operations = [\"get\"] }}]\n"
    );
    let output = check_config(dir.path(), &elsewhere);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    for named in [
        "/proc/rkms/audit.log",
        "garbage.token-sha256",
        "keyring.json",
    ] {
        assert!(stderr.contains(named), "{named} not named: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "garbage");

    let output = check_config(dir.path(), "[server]\nport = 99999\n");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.port"));
}
