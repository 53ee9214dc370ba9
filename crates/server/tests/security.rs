//! The built server over TLS with client certificates and tokens, certificate reloads, the
//! refusal to serve plain HTTP beyond loopback, and hostile store contents.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rkms_core::{KeyId, Store as _};
use rkms_server::auth::TokenHash;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{get_json, Server, ANONYMOUS_PRINCIPAL};

/// A certificate authority for one test.
struct Authority(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key, PEM, with the certificate's DER.
struct Leaf {
    certificate: String,
    key: String,
    der: Vec<u8>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        self.issue_with(common_name, CertificateParams::new(names).unwrap(), usage)
    }

    fn issue_with(
        &self,
        common_name: &str,
        mut params: CertificateParams,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
            der: certificate.der().to_vec(),
        }
    }

    fn server(&self, common_name: &str) -> Leaf {
        self.issue(
            common_name,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose DNS name (and common name) is `name`.
    fn client(&self, name: &str) -> Leaf {
        self.issue(name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with this common name and these subject alternative names only.
    fn client_with(&self, common_name: &str, names: Vec<SanType>) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        self.issue_with(common_name, params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A data directory with a TLS configuration: server certificate files, the client CA, a
/// certificate principal and a token principal.
struct TlsSetup {
    dir: tempfile::TempDir,
    ca: Authority,
    token: String,
}

impl TlsSetup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("rkms test CA");
        let setup = Self {
            dir,
            ca,
            token: "rkms_batch-test-token".into(),
        };
        setup.install_server_certificate(&setup.ca.server("first"));
        std::fs::write(setup.path("clients-ca.pem"), setup.ca.pem()).unwrap();
        let config = format!(
            "[server.tls]\ncertificate = {:?}\nprivate_key = {:?}\nclient_ca = {:?}\nreload_interval_seconds = 1\n\
             [kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\n[audit]\npath = {:?}\n\
             [[principals]]\nname = \"orders\"\nclient_certificate_names = [\"dns:orders.internal\"]\n\
             allow = [{{ ids = [\"orders/*\"], operations = [\"get\", \"create\"] }}]\n\
             [[principals]]\nname = \"billing\"\nclient_certificate_names = [\"uri:spiffe://corp/billing\"]\n\
             allow = [{{ ids = [\"billing/*\"], operations = [\"get\", \"create\"] }}]\n\
             [[principals]]\nname = \"legacy\"\nclient_certificate_names = [\"cn:legacy-client\"]\n\
             allow = [{{ ids = [\"legacy/*\"], operations = [\"get\", \"create\"] }}]\n\
             [[principals]]\nname = \"batch\"\ntoken_sha256 = [\"{}\"]\n\
             allow = [{{ ids = [\"batch/*\"], operations = [\"get\", \"create\"] }}]\n",
            setup.path("server.pem"),
            setup.path("server.key"),
            setup.path("clients-ca.pem"),
            setup.path("ring.json"),
            setup.path("keys.db"),
            setup.path("audit.log"),
            TokenHash::of(&setup.token).to_hex(),
        );
        std::fs::write(setup.path("rkms.toml"), config).unwrap();
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn install_server_certificate(&self, leaf: &Leaf) {
        // A reload between the two writes sees a mismatched pair and keeps the one in force.
        std::fs::write(self.path("server.key"), &leaf.key).unwrap();
        std::fs::write(self.path("server.pem"), &leaf.certificate).unwrap();
    }

    fn start(&self) -> Server {
        let config = self.path("rkms.toml");
        Server::start_logging(&["--config", config.to_str().unwrap()], "debug")
    }

    /// An HTTPS client that trusts the test CA and presents `identity`, if given.
    fn client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap(),
            );
        if let Some(leaf) = identity {
            let pem = format!("{}{}", leaf.certificate, leaf.key);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

fn https(server: &Server, path_and_query: &str) -> String {
    format!("https://{}{path_and_query}", server.addr)
}

#[tokio::test]
async fn tls_clients_are_known_by_certificate_or_token_and_nothing_leaks() {
    let setup = TlsSetup::new();
    let server = setup.start();
    let orders = setup.ca.client("orders.internal");
    let stranger = setup.ca.client("stranger.internal");
    let impostor = Authority::new("another CA").client("orders.internal");
    let mut handed_out = Vec::new();

    // A trusted certificate that names a principal: its ids only.
    let client = setup.client(Some(&orders));
    let (status, body) = get_json(&client, &https(&server, "/api/v1/key?id=orders/1")).await;
    assert_eq!(status, 200, "{body}");
    handed_out.push(body["key"].as_str().unwrap().to_owned());
    let (status, body) = get_json(&client, &https(&server, "/api/v1/key?id=batch/1")).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (403, Some("Forbidden"))
    );

    // A certificate from an untrusted CA does not get past the handshake.
    let refused = setup
        .client(Some(&impostor))
        .get(https(&server, "/api/v1/key?id=orders/1"))
        .send()
        .await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");

    // A trusted certificate that names no principal, or no credentials at all: 401.
    for client in [setup.client(Some(&stranger)), setup.client(None)] {
        let (status, body) = get_json(&client, &https(&server, "/api/v1/key?id=orders/1")).await;
        assert_eq!(
            (status, body["error_type"].as_str()),
            (401, Some("Unauthorized"))
        );
    }

    // A token over TLS, and a wrong one.
    let client = setup.client(None);
    let response = client
        .get(https(&server, "/api/v1/key?id=batch/1"))
        .bearer_auth(&setup.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    handed_out.push(body["key"].as_str().unwrap().to_owned());
    let response = client
        .get(https(&server, "/api/v1/key?id=batch/1"))
        .bearer_auth("rkms_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    let log = server.log.lock().unwrap().join("\n");
    assert!(server.stop().success());
    let audit = std::fs::read_to_string(setup.path("audit.log")).unwrap();
    let principals: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| format!("{} {} {}", l["principal"], l["operation"], l["outcome"]).replace('"', ""))
        .collect();
    assert_eq!(
        principals,
        [
            "orders create ok",
            "orders get_or_create denied",
            "batch create ok"
        ]
    );
    assert!(!log.contains(&setup.token) && !audit.contains(&setup.token));
    for key in &handed_out {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        for text in [&log, &audit] {
            assert!(
                !text.contains(key.as_str()) && !text.contains(&hex),
                "a key leaked"
            );
        }
    }
}

// Several threads: the client's gRPC connections answer the server's shutdown while the
// test waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_knows_the_same_certificates_and_tokens() {
    let setup = TlsSetup::new();
    let server = setup.start();
    let url = https(&server, "");
    let client = |identity: Option<&Leaf>, token: Option<&str>| {
        let mut builder = rkms_client::Client::builder()
            .grpc()
            .url(&url)
            .attempts(1)
            .root_certificate_pem(setup.ca.pem().into_bytes());
        if let Some(leaf) = identity {
            builder =
                builder.identity_pem(format!("{}{}", leaf.certificate, leaf.key).into_bytes());
        }
        if let Some(token) = token {
            builder = builder.token(token);
        }
        builder.build().unwrap()
    };
    let kind = |result: Result<rkms_client::Key, rkms_client::Error>| {
        result.expect_err("refused").kind().cloned()
    };

    // HTTP/2 is offered in ALPN: the certificate's principal over gRPC, its ids only.
    let orders = client(Some(&setup.ca.client("orders.internal")), None);
    let key = orders.get_key("orders/1").await.unwrap();
    let (status, body) = get_json(
        &setup.client(Some(&setup.ca.client("orders.internal"))),
        &https(&server, "/api/v1/key?id=orders/1"),
    )
    .await;
    assert_eq!(status, 200);
    let over_https = base64::engine::general_purpose::STANDARD
        .decode(body["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.expose_secret(), over_https.as_slice());
    assert_eq!(
        kind(orders.get_key("batch/1").await),
        Some(rkms_client::ErrorKind::Forbidden)
    );
    // A certificate naming no principal, or nothing at all: unauthenticated.
    for nobody in [
        client(Some(&setup.ca.client("stranger.internal")), None),
        client(None, None),
    ] {
        assert_eq!(
            kind(nobody.get_key("orders/1").await),
            Some(rkms_client::ErrorKind::Unauthorized)
        );
    }
    // A token in the `authorization` metadata.
    let batch = client(None, Some(&setup.token));
    batch.get_key("batch/1").await.unwrap();

    drop((orders, batch));
    assert!(server.stop().success());
    let audit = std::fs::read_to_string(setup.path("audit.log")).unwrap();
    let grpc: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["transport"] == "grpc")
        .map(|l| format!("{} {} {}", l["principal"], l["operation"], l["outcome"]).replace('"', ""))
        .collect();
    assert_eq!(
        grpc,
        [
            "orders create ok",
            "orders get_or_create denied",
            "batch create ok"
        ]
    );
}

#[tokio::test]
async fn certificate_names_match_by_kind_and_the_common_name_only_without_alternative_names() {
    let setup = TlsSetup::new();
    let server = setup.start();
    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
    let cases = [
        // The URI the billing principal is configured by, as a URI name: billing.
        (
            setup
                .ca
                .client_with("anything", vec![uri("spiffe://corp/billing")]),
            "billing/1",
            200,
        ),
        // The same text as a common name is not a URI.
        (
            setup.ca.client_with("spiffe://corp/billing", vec![]),
            "billing/1",
            401,
        ),
        // A DNS name as a common name is not a DNS name either.
        (
            setup.ca.client_with("orders.internal", vec![]),
            "orders/1",
            401,
        ),
        // A common name counts only on a certificate without DNS or URI names (RFC 6125).
        (
            setup.ca.client_with("legacy-client", vec![]),
            "legacy/1",
            200,
        ),
        (
            setup
                .ca
                .client_with("legacy-client", vec![dns("other.internal")]),
            "legacy/1",
            401,
        ),
        (
            setup
                .ca
                .client_with("legacy-client", vec![uri("spiffe://corp/other")]),
            "legacy/1",
            401,
        ),
    ];
    for (leaf, id, expected) in &cases {
        let client = setup.client(Some(leaf));
        let url = https(&server, &format!("/api/v1/key?id={id}"));
        let (status, body) = get_json(&client, &url).await;
        assert_eq!(status, *expected, "{id}: {body}");
    }
}

/// The leaf certificate the server at `addr` presents.
async fn served_certificate(addr: &str, ca: &Authority) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.0.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn wait_for_certificate(server: &Server, ca: &Authority, expected: &Leaf) {
    let started = Instant::now();
    while served_certificate(&server.addr, ca).await != expected.der {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not served; log:\n{}",
            server.log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_are_reloaded_on_sighup_and_on_change_and_bad_files_are_ignored() {
    let setup = TlsSetup::new();
    let first = setup.ca.server("first");
    setup.install_server_certificate(&first);
    let server = setup.start();
    assert_eq!(served_certificate(&server.addr, &setup.ca).await, first.der);

    let second = setup.ca.server("second");
    setup.install_server_certificate(&second);
    server.signal("HUP");
    wait_for_certificate(&server, &setup.ca, &second).await;

    // Broken files are refused and the certificate in force stays.
    std::fs::write(setup.path("server.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_certificate(&server.addr, &setup.ca).await,
        second.der
    );
    assert!(server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("TLS reload failed")));

    // Without a signal, the periodic check picks up a change.
    let third = setup.ca.server("third");
    setup.install_server_certificate(&third);
    wait_for_certificate(&server, &setup.ca, &third).await;
}

fn run_server(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\"]\nkeyring_path = {:?}\n{ANONYMOUS_PRINCIPAL}",
            dir.path().join("ring.json")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let output = run_server(&["--config", config, "--listen", "0.0.0.0:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow_insecure_http"), "{stderr}");

    let data = dir.path().to_str().unwrap();
    let output = run_server(&["--data-dir", data, "--listen", "0.0.0.0:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback only"), "{stderr}");
}

async fn put_raw(db: &Path, id: &str, bytes: &[u8]) {
    let store = rkms_store_sqlite::SqliteStore::open(&rkms_store_sqlite::SqliteConfig::new(db))
        .await
        .unwrap();
    store
        .put_if_absent(&KeyId::parse(id).unwrap(), bytes.to_vec())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupted_record_gives_500_json_and_other_ids_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {db:?}\n{ANONYMOUS_PRINCIPAL}",
            dir.path().join("ring.json")
        ),
    )
    .unwrap();
    // Started first: a new keyring is made only for a store without records.
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    put_raw(&db, "broken", b"\x00\xffnot a record").await;
    put_raw(&db, "truncated", br#"{"format":1,"copies":{"a":"#).await;
    let client = reqwest::Client::new();
    for id in ["broken", "truncated"] {
        let (status, body) = get_json(&client, &server.key_url(&format!("id={id}"))).await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error_type"], "InternalError");
        let message = body["error_message"].as_str().unwrap();
        assert!(
            message.contains(id) && message.contains("unreadable"),
            "{message}"
        );
    }
    let (status, body) = get_json(&client, &server.key_url("id=healthy")).await;
    assert_eq!(status, 200, "{body}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("stored record is unreadable"), "{log}");
    assert!(!log.contains("panicked"));
}

/// Sends `request` as raw bytes and returns the status code and the body.
async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn oversized_requests_over_the_wire_get_4xx_json_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\n{ANONYMOUS_PRINCIPAL}",
            dir.path().join("ring.json"),
            dir.path().join("keys.db"),
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let request = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
            .into_bytes()
    };
    let cases = [
        (
            request(&format!("/api/v1/key?id={}", "a".repeat(5000)), ""),
            414,
        ),
        (
            request(
                "/api/v1/key?id=a",
                &format!("X-Filler: {}\r\n", "f".repeat(20_000)),
            ),
            431,
        ),
        (
            request("/api/v1/key?id=a", "Content-Length: 5\r\n\r\nhello"),
            413,
        ),
        (request("/api/v1/key?id=a%zz", ""), 400),
        (request("/api/v1/key?id=a&id=b", ""), 400),
    ];
    for (bytes, expected) in cases {
        let (status, body) = raw_exchange(&server.addr, &bytes).await;
        assert_eq!(status, expected, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert!(body["error_type"].is_string(), "{body}");
    }
    let (status, body) =
        get_json(&reqwest::Client::new(), &server.key_url("id=still-serving")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn principals_are_reloaded_on_sighup_and_a_refused_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let write_config = |token: &str, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
                 [store]\nbackend = \"sqlite\"\npath = {:?}\n{extra}\n\
                 [[principals]]\nname = \"app\"\ntoken_sha256 = [\"{}\"]\n\
                 allow = [{{ ids = [\"*\"], operations = [\"get\", \"create\"] }}]\n",
                dir.path().join("ring.json"),
                dir.path().join("keys.db"),
                TokenHash::of(token).to_hex(),
            ),
        )
        .unwrap();
    };
    write_config("rkms_old", "");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let status_with = |token: &'static str| {
        let request = client.get(server.key_url("id=rotated")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_with("rkms_old").await, 200);
    assert_eq!(status_with("rkms_new").await, 401);

    write_config("rkms_new", "");
    server.signal("HUP");
    let started = Instant::now();
    while status_with("rkms_new").await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new token never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status_with("rkms_old").await,
        401,
        "the rotated-out token is refused"
    );

    write_config("rkms_newer", "[server]\nmystery = 1\n");
    server.signal("HUP");
    let started = Instant::now();
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("the configuration file is refused"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the refusal was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status_with("rkms_new").await,
        200,
        "the principals in force stay"
    );
    assert_eq!(status_with("rkms_newer").await, 401);
}

/// A configuration with one token principal limited to 5 requests a second, and one that may
/// read metrics.
fn token_config(dir: &Path, token: &str, metrics_token: &str) -> PathBuf {
    let config = dir.join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\n\
             [[principals]]\nname = \"app\"\ntoken_sha256 = [\"{}\"]\n\
             rate_limit_per_second = 5\nrate_limit_burst = 5\n\
             allow = [{{ ids = [\"*\"], operations = [\"get\", \"create\"] }}]\n\
             [[principals]]\nname = \"prometheus\"\ntoken_sha256 = [\"{}\"]\nmetrics = true\n",
            dir.join("ring.json"),
            dir.join("keys.db"),
            TokenHash::of(token).to_hex(),
            TokenHash::of(metrics_token).to_hex(),
        ),
    )
    .unwrap();
    config
}

/// A client whose connections come from `source`, a loopback address.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn wrong_tokens_past_the_address_budget_get_429_and_the_log_counts_them_in_a_few_lines() {
    let dir = tempfile::tempdir().unwrap();
    let token = "rkms_the-right-token-for-the-app";
    let metrics_token = "rkms_the-token-of-the-metrics-reader";
    let config = token_config(dir.path(), token, metrics_token);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let logged_before = server.log.lock().unwrap().len();

    let guesser = client_from("127.0.0.1");
    let url = server.key_url("id=guessed");
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut last_refusal = None;
    for n in 0..3000 {
        let response = guesser
            .get(&url)
            .bearer_auth(format!("rkms_guess-{n}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        if status == 429 {
            let retry_after = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .to_owned();
            last_refusal = Some((
                retry_after,
                response.json::<serde_json::Value>().await.unwrap(),
            ));
        }
    }
    // The default budget: 60 at once, then one a second.
    let budget = 60 + started.elapsed().as_secs() as usize + 1;
    let unauthorized = statuses.get(&401).copied().unwrap_or_default();
    assert!(
        (60..=budget).contains(&unauthorized),
        "a guesser gets a minute's budget of answers: {statuses:?}"
    );
    assert_eq!(
        unauthorized + statuses.get(&429).copied().unwrap_or_default(),
        3000
    );
    let (retry_after, body) = last_refusal.expect("refusals");
    assert!(retry_after.parse::<u64>().unwrap() >= 1, "{retry_after}");
    assert_eq!(body["error_type"], "TooManyRequests");
    assert!(
        body["error_message"]
            .as_str()
            .unwrap()
            .contains("failed authentications"),
        "{body}"
    );
    // Another address is not affected.
    let other = client_from("127.0.0.2");
    let response = other.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let metrics = other
        .get(format!("{}/metrics", server.base))
        .bearer_auth(metrics_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = |reason: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("rkms_http_rejections_total") && l.contains(reason))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_default()
    };
    assert_eq!(
        counted("\"unauthenticated\""),
        unauthorized as f64,
        "{metrics}"
    );
    assert!(counted("\"too_many_failures\"") >= 2900.0, "{metrics}");

    let log = server.log.lock().unwrap()[logged_before..].to_vec();
    assert!(
        log.len() <= 5,
        "3000 failures wrote {} log lines:\n{}",
        log.len(),
        log.join("\n")
    );
    assert!(log.iter().any(|l| l.contains("127.0.0.1")), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("rkms_guess")),
        "no token is logged"
    );
}

/// Runs `rkms-server token hash` with `input` on standard input.
fn token_hash(input: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn token_hash_refuses_tokens_too_short_to_resist_guessing() {
    let output = token_hash("rkms_password123\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a short token was hashed");
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains("32 characters") && stderr.contains("token new"),
        "{stderr}"
    );
    assert!(!stderr.contains("password123"), "the token is not echoed");

    let generated = run_server(&["token", "new"]);
    let text = String::from_utf8(generated.stdout).unwrap();
    let token = text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("token:")
        .trim();
    let hash = text
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("token_sha256:")
        .trim();
    let output = token_hash(&format!("{token}\n"));
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), hash);
}

#[tokio::test]
async fn the_development_default_answers_only_requests_addressed_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let port = server.addr.rsplit(':').next().unwrap();
    let request = |host: Option<&str>| {
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        format!(
            "GET /api/v1/key?id=rebound HTTP/1.1\r\n{host}Origin: http://attacker.example:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_owned(),
        format!("localhost.attacker.example:{port}"),
        format!("10.0.0.5:{port}"),
    ] {
        let (status, body) = raw_exchange(&server.addr, &request(Some(&host))).await;
        assert_eq!(status, 403, "Host: {host}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error_type"], "HostNotAllowed", "{body}");
        assert!(body.get("key").is_none());
        let message = body["error_message"].as_str().unwrap();
        assert!(message.contains("allowed_hosts"), "{message}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
        format!("rkms.localhost:{port}"),
    ] {
        let (status, body) = raw_exchange(&server.addr, &request(Some(&host))).await;
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
    // No browser sends a request without Host, and rebinding needs a browser.
    let http10 = b"GET /api/v1/key?id=rebound HTTP/1.0\r\n\r\n";
    let (status, body) = raw_exchange(&server.addr, http10).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_generated_token_is_printed_once_at_first_start_and_only_its_hash_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("quickstart.token-sha256");
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\n\
             [[principals]]\nname = \"quickstart\"\ngenerated_token_file = {token_file:?}\n\
             allow = [{{ ids = [\"*\"], operations = [\"get\", \"create\"] }}]\n",
            dir.path().join("ring.json"),
            dir.path().join("keys.db"),
        ),
    )
    .unwrap();
    let printed = |server: &Server| -> Vec<String> {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("rkms_") && w.len() == 48)
            })
            .map(str::to_owned)
            .collect()
    };
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let tokens = printed(&server);
    assert_eq!(tokens.len(), 1, "{:?}", server.log.lock().unwrap());
    let token = tokens[0].clone();
    let client = reqwest::Client::new();
    let status = |server: &Server, token: &str| {
        let request = client.get(server.key_url("id=quick")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&server, &token).await, 200);
    assert_eq!(
        status(&server, "rkms_anything-else-at-all-32-chars").await,
        401
    );
    let kept = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(kept.trim(), TokenHash::of(&token).to_hex());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(server);

    let server = Server::start(&["--config", config.to_str().unwrap()]);
    assert!(printed(&server).is_empty(), "printed once");
    assert_eq!(status(&server, &token).await, 200);
}
