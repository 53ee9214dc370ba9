//! Availability while regions flap (issue 18): a seeded, bounded chaos soak.
//!
//! Three server processes share one store and three emulated AWS KMS regions. Every region,
//! and in the second scenario the store too, sits behind a fault proxy whose mode changes on a
//! seeded schedule while 16 clients ask the servers for new and known ids. The cache is off, so
//! every request reaches KMS.
//!
//! The test asserts what must hold whatever the faults: no 500, one key per id in every
//! answer, no key lost once everything is healed and repaired, every failure a JSON error. It
//! prints an availability table and asserts a floor on availability among the requests that
//! should have succeeded (enough regions and the store answering for their whole duration):
//! 99% in the suite's short runs, the 99.9% target in runs of 5 minutes or more.
//!
//! - `RKMS_CHAOS_SEED=<n>` replays a run's schedule and request mix (the seed is printed at
//!   start; the timing of a run is never the same twice).
//! - `RKMS_CHAOS_SECONDS=<n>` sets each scenario's load duration, for a long run.
//! - `RKMS_CHAOS_STRAGGLER_WAIT_MS=<n>` sets the servers' `[kms] straggler_wait_ms`, to
//!   measure what waiting for every copy costs in create latency.
//! - `RKMS_CHAOS_STORES=postgres,etcd` (or `all`) runs both scenarios over those stores
//!   instead of their own: `sqlite` (flapping only: no proxy can take an embedded file away),
//!   `postgres`, `redis`, `etcd`, `dynamodb` (build with `--all-features`).
//!
//! Needs the test services: `scripts/services.sh start && source .test-services/env`.
//! `cargo test -p rkms-server --all-features --test chaos -- --nocapture` shows the tables.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rkms_conformance::proxy::{Proxy, ProxyMode};
use rkms_core::{Record, Store};
use rkms_server::backends::open_store;
use rkms_server::config::Settings;
use support::{emulated_regions, region_proxy, required_env, unique, Server, ANONYMOUS_PRINCIPAL};

/// Least share of the requests that should have succeeded which must succeed, for reads and
/// for creates each. The target is 99.9%, and a long run (`RKMS_CHAOS_SECONDS`, see
/// BENCHMARKS.md) is held to it; in the suite's 30 s, with some 500 creates, one unlucky
/// request is already 0.2%, so the suite allows a few. Before the breakers stopped refusing
/// requests, creates reached 77-83% here.
fn min_availability(load: Duration) -> f64 {
    if load >= LONG_RUN {
        0.999
    } else {
        0.99
    }
}

/// A load at least this long is a long run, held to the target itself.
const LONG_RUN: Duration = Duration::from_secs(300);

/// Regions under test: the first three emulated ones.
const REGIONS: usize = 3;
/// Copies a create needs: the server's default `min_regions`.
const MIN_REGIONS: usize = 2;
/// Concurrent clients, spread over the servers.
const CLIENTS: u64 = 16;
/// Least time between the starts of two requests of one client. Without it a client whose
/// requests fail fast would ask many times more often than one whose requests succeed, and
/// the figures would weigh the worst moments most; with it they weigh every moment alike
/// (while answers take less than this).
const REQUEST_INTERVAL: Duration = Duration::from_millis(100);
/// Share of requests that ask for a new id; the rest ask for ids already handed out.
const NEW_ID_SHARE: f64 = 0.2;
/// Longest wait for a client's answer: well past the server's 10 s request deadline, so a
/// request that takes longer is a hang, not a slow answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the repairers to complete every record once everything is healed.
const REPAIR_BOUND: Duration = Duration::from_secs(10);
/// Attempts to read an id back after healing: breakers opened during the run may still be
/// open for their 5 s when the read-back starts.
const READ_BACK_ATTEMPTS: usize = 8;

/// The issue's "flapping" scenario: exactly one region faulty at any moment, a different one
/// every 3 s, its fault cycling refuse → blackhole → delay 0.4 s, over SQLite. Each region is
/// needed again right after it recovers, since another one has just gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_regions_keep_every_key_and_stay_available() {
    let _one_at_a_time = ONE_SOAK_AT_A_TIME.lock().await;
    let scenario = Scenario {
        name: "flapping regions",
        load: load_duration(30),
        plan: flapping_plan,
    };
    let dir = tempfile::tempdir().unwrap();
    for store in stores("sqlite") {
        let backing = match store.as_str() {
            "sqlite" => Backing::sqlite(&dir.path().join("rkms.sqlite3")),
            other => Backing::networked_store(other),
        };
        soak(&scenario, backing).await;
    }
}

/// Up to two regions faulty at once and the store faulty for a few seconds at a time, with
/// random modes every 1–4 s, over PostgreSQL behind a proxy (or the network stores named in
/// `RKMS_CHAOS_STORES`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_regions_and_store_keep_every_key_and_stay_available() {
    let _one_at_a_time = ONE_SOAK_AT_A_TIME.lock().await;
    let scenario = Scenario {
        name: "regions and store faulty",
        load: load_duration(30),
        plan: store_faults_plan,
    };
    for store in stores("postgres").iter().filter(|s| *s != "sqlite") {
        soak(&scenario, Backing::networked_store(store)).await;
    }
}

/// The stores to soak: `RKMS_CHAOS_STORES` (a comma-separated list of `sqlite`, `postgres`,
/// `redis`, `etcd`, `dynamodb`, or `all`), else the scenario's own.
fn stores(own: &str) -> Vec<String> {
    match std::env::var("RKMS_CHAOS_STORES") {
        Err(_) => vec![own.to_owned()],
        Ok(list) if list == "all" => ["sqlite", "postgres", "redis", "etcd", "dynamodb"]
            .map(str::to_owned)
            .to_vec(),
        Ok(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
    }
}

/// The soaks share the emulated regions (and two cores): run together, each would measure the
/// other's load.
static ONE_SOAK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scenario: a fault schedule over a store, and the availability it must keep.
struct Scenario {
    name: &'static str,
    load: Duration,
    /// The fault schedule for a load of the given length.
    plan: fn(&mut StdRng, Duration) -> Vec<Step>,
}

/// `RKMS_CHAOS_SECONDS`, else `default` seconds.
fn load_duration(default: u64) -> Duration {
    let seconds = std::env::var("RKMS_CHAOS_SECONDS").map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("RKMS_CHAOS_SECONDS={s:?} is not a number of seconds"))
    });
    Duration::from_secs(seconds)
}

/// `RKMS_CHAOS_SEED`, else a fresh one; printed either way so a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("RKMS_CHAOS_SEED").map_or_else(
        |_| rand::random(),
        |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("RKMS_CHAOS_SEED={s:?} is not a u64"))
        },
    );
    println!("chaos seed {seed} (RKMS_CHAOS_SEED={seed} replays the schedule and request mix)");
    seed
}

/// Runs one scenario end to end: start, load under the fault schedule, heal, repair, check.
async fn soak(scenario: &Scenario, backing: Backing) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = (scenario.plan)(&mut rng, scenario.load);
    let deployment = Deployment::start(backing).await;

    let started = Instant::now();
    let (timeline, outcomes) = tokio::join!(
        deployment.run_schedule(&plan, started),
        run_load(&deployment.servers, seed, started + scenario.load),
    );
    deployment.heal().await;
    let repair = deployment.wait_until_repaired().await;
    let read_back = read_back(&deployment.servers, &outcomes).await;

    let run = Run {
        seed,
        timeline,
        outcomes,
        repair,
        read_back,
    };
    let report = Report::new(scenario, &run, &deployment);
    println!("{report}");
    check_invariants(&run, &report);
    report.check_availability(min_availability(scenario.load));
}

// ---------------------------------------------------------------------------------------------
// Faults

/// What the schedule can take away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Region(usize),
    Store,
}

/// One change of the schedule, `at` after the load starts.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: Duration,
    part: Part,
    mode: ProxyMode,
}

/// Every proxy's mode at one moment. The store is always `Pass` when it has no proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Faults {
    regions: [ProxyMode; REGIONS],
    store: ProxyMode,
}

impl Faults {
    const HEALTHY: Self = Self {
        regions: [ProxyMode::Pass; REGIONS],
        store: ProxyMode::Pass,
    };

    fn with(mut self, part: Part, mode: ProxyMode) -> Self {
        match part {
            Part::Region(i) => self.regions[i] = mode,
            Part::Store => self.store = mode,
        }
        self
    }

    /// `PRB/D`: each region's mode, then the store's.
    fn label(&self) -> String {
        let letters: String = self.regions.iter().map(|m| letter(*m)).collect();
        format!("{letters}/{}", letter(self.store))
    }
}

/// Whether a part in this mode answers: a delayed part is slow, not faulty.
fn answers(mode: ProxyMode) -> bool {
    matches!(mode, ProxyMode::Pass | ProxyMode::Delay(_))
}

/// Longest delay through which the store still answers within the server's 2 s store timeout
/// when the pool must connect anew (after a reset or refusal cut its connections): PostgreSQL's
/// start-up, SCRAM exchange and the query are four messages from the server, each held for the
/// delay. Longer delays fail such requests by arithmetic, not by a fault of RKMS; requests
/// during them are left out of the availability figure (the invariants still hold for them).
const STORE_DELAY_ANSWERED: Duration = Duration::from_millis(400);

/// Whether the store in this mode answers a request that may need a new connection.
fn store_answers(mode: ProxyMode) -> bool {
    match mode {
        ProxyMode::Delay(delay) => delay <= STORE_DELAY_ANSWERED,
        other => answers(other),
    }
}

fn letter(mode: ProxyMode) -> char {
    match mode {
        ProxyMode::Pass => 'P',
        ProxyMode::Refuse => 'R',
        ProxyMode::Blackhole => 'B',
        ProxyMode::Delay(_) => 'D',
        ProxyMode::Reset => 'X',
    }
}

/// Scenario A: every 3 s the faulty region heals and another one, chosen at random, fails;
/// the fault cycles refuse → blackhole → delay 0.4 s.
fn flapping_plan(rng: &mut StdRng, load: Duration) -> Vec<Step> {
    let cycle = [
        ProxyMode::Refuse,
        ProxyMode::Blackhole,
        ProxyMode::Delay(Duration::from_millis(400)),
    ];
    let mut faulty = rng.random_range(0..REGIONS);
    let mut steps = Vec::new();
    let times = (0..)
        .map(|n| Duration::from_secs(3 * n))
        .take_while(|at| *at < load);
    for (n, at) in times.enumerate() {
        if n > 0 {
            steps.push(Step {
                at,
                part: Part::Region(faulty),
                mode: ProxyMode::Pass,
            });
            faulty = (faulty + rng.random_range(1..REGIONS)) % REGIONS;
        }
        steps.push(Step {
            at,
            part: Part::Region(faulty),
            mode: cycle[n % cycle.len()],
        });
    }
    steps
}

/// Scenario B: every 1–4 s one region takes a random mode (never leaving fewer than one
/// answering), and the store either heals or, one time in three when it is passing, takes a
/// random fault until the next change.
fn store_faults_plan(rng: &mut StdRng, load: Duration) -> Vec<Step> {
    let mut faults = Faults::HEALTHY;
    let mut steps = Vec::new();
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(rng.random_range(1000..=4000));
        if at >= load {
            return steps;
        }
        let region = rng.random_range(0..REGIONS);
        let mut mode = random_mode(rng, true);
        let others_down = (0..REGIONS)
            .filter(|&i| i != region && !answers(faults.regions[i]))
            .count();
        if !answers(mode) && others_down == REGIONS - 1 {
            mode = ProxyMode::Pass;
        }
        faults = faults.with(Part::Region(region), mode);
        steps.push(Step {
            at,
            part: Part::Region(region),
            mode,
        });
        let store = if faults.store == ProxyMode::Pass && rng.random_bool(1.0 / 3.0) {
            random_mode(rng, false)
        } else {
            ProxyMode::Pass
        };
        if store != faults.store {
            faults = faults.with(Part::Store, store);
            steps.push(Step {
                at,
                part: Part::Store,
                mode: store,
            });
        }
    }
}

/// A random fault (delays of 0.2–0.6 s), or `Pass` as often as any one fault when allowed.
fn random_mode(rng: &mut StdRng, may_pass: bool) -> ProxyMode {
    let delay = ProxyMode::Delay(Duration::from_millis(rng.random_range(200..=600)));
    let modes = [
        ProxyMode::Refuse,
        ProxyMode::Blackhole,
        delay,
        ProxyMode::Reset,
        ProxyMode::Pass,
    ];
    modes[rng.random_range(0..modes.len() - usize::from(!may_pass))]
}

/// The fault state over a run: each entry holds from its instant until the next one.
struct Timeline(Vec<(Instant, Faults)>);

impl Timeline {
    /// The states in force at some moment between `start` and `end`, in order.
    fn during(&self, start: Instant, end: Instant) -> Vec<Faults> {
        let first = self
            .0
            .partition_point(|(at, _)| *at <= start)
            .saturating_sub(1);
        self.0[first..]
            .iter()
            .take_while(|(at, _)| *at <= end)
            .map(|(_, faults)| *faults)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The deployment

/// Where the records live: a `[store]` section in which `{addr}` stands for the store
/// service's `host:port`, so that the servers can reach it through its proxy and the test's
/// own client straight.
struct Backing {
    name: &'static str,
    section: String,
    /// The service's `host:port`; `None` for the embedded file, which no proxy can take away.
    addr: Option<String>,
}

impl Backing {
    /// One file shared by the three servers.
    fn sqlite(path: &Path) -> Self {
        let section = format!("backend = \"sqlite\"\npath = {path:?}");
        Self {
            name: "SQLite",
            section,
            addr: None,
        }
    }

    /// The network store named `name` in `RKMS_CHAOS_STORES`.
    fn networked_store(name: &str) -> Self {
        match name {
            "postgres" => Self::postgres(),
            "redis" => Self::redis(),
            "etcd" => Self::etcd(),
            "dynamodb" => Self::dynamodb(),
            other => panic!(
                "RKMS_CHAOS_STORES names {other:?}: use sqlite, postgres, redis, etcd, dynamodb or all"
            ),
        }
    }

    /// A fresh schema.
    fn postgres() -> Self {
        let schema = unique("rkms_chaos_");
        Self::networked(
            "PostgreSQL",
            &required_env("RKMS_TEST_POSTGRES_URL"),
            |url| format!("backend = \"postgres\"\nurl = {url:?}\nschema = {schema:?}"),
        )
    }

    /// A fresh key prefix.
    fn redis() -> Self {
        let prefix = unique("rkms-chaos-") + ":";
        Self::networked("Redis", &required_env("RKMS_TEST_REDIS_URL"), |url| {
            format!("backend = \"redis\"\nurl = {url:?}\nprefix = {prefix:?}")
        })
    }

    /// A fresh key prefix, on the first endpoint.
    fn etcd() -> Self {
        let endpoints = required_env("RKMS_TEST_ETCD_ENDPOINTS");
        let first = endpoints.split(',').next().unwrap_or_default();
        let prefix = unique("rkms-chaos-") + "/";
        Self::networked("etcd", first, |url| {
            format!("backend = \"etcd\"\nendpoints = [{url:?}]\nprefix = {prefix:?}")
        })
    }

    /// A fresh table, with the longer timeout the serialized emulator needs (as e2e_stores).
    fn dynamodb() -> Self {
        let table = unique("rkms_chaos_");
        Self::networked(
            "DynamoDB",
            &required_env("RKMS_TEST_DYNAMODB_ENDPOINT"),
            |url| {
                format!(
                    "backend = \"dynamodb\"\ntable_name = {table:?}\nregion = \"us-east-1\"\n\
                 endpoint = {url:?}\ncreate_table = true\ntimeout_ms = 5000"
                )
            },
        )
    }

    /// A service at `url`: `section` gets the URL with its `host:port` as `{addr}`.
    fn networked(name: &'static str, url: &str, section: impl FnOnce(&str) -> String) -> Self {
        let parsed = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
        let addr = format!(
            "{}:{}",
            parsed.host_str().unwrap(),
            parsed.port().unwrap_or(0)
        );
        assert!(url.contains(&addr), "{url:?} must name its host and port");
        let section = section(&url.replacen(&addr, "{addr}", 1));
        Self {
            name,
            section,
            addr: Some(addr),
        }
    }

    /// The section, reaching the service through `proxy`, or straight without one.
    fn section_via(&self, proxy: Option<&Proxy>) -> String {
        let addr = match (proxy, &self.addr) {
            (Some(proxy), _) => proxy.addr().to_string(),
            (None, addr) => addr.clone().unwrap_or_default(),
        };
        self.section.replace("{addr}", &addr)
    }

    /// A proxy in front of the service, if there is one to take away.
    async fn proxy(&self) -> Option<Proxy> {
        let addr = self.addr.as_deref()?;
        let upstream = tokio::net::lookup_host(addr).await.unwrap().next().unwrap();
        Some(Proxy::start(upstream).await)
    }
}

/// Three servers, their regions and store behind proxies.
struct Deployment {
    servers: Vec<Server>,
    region_names: Vec<String>,
    regions: Vec<Proxy>,
    store: Option<Proxy>,
    backing: Backing,
    config_dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(backing: Backing) -> Self {
        let emulated = &emulated_regions()[..REGIONS];
        let mut regions = Vec::new();
        for (_, endpoint) in emulated {
            regions.push(region_proxy(endpoint).await);
        }
        let store = backing.proxy().await;
        let region_names: Vec<String> = emulated.iter().map(|(r, _)| r.clone()).collect();
        let config_dir = tempfile::tempdir().unwrap();
        let config = config_dir.path().join("rkms.toml");
        let text = server_config(
            &region_names,
            &regions,
            &backing.section_via(store.as_ref()),
        );
        std::fs::write(&config, text).unwrap();
        let servers = Server::start_together(3, &["--config", config.to_str().unwrap()]);
        Self {
            servers,
            region_names,
            regions,
            store,
            backing,
            config_dir,
        }
    }

    fn proxy(&self, part: Part) -> &Proxy {
        match part {
            Part::Region(i) => &self.regions[i],
            Part::Store => self
                .store
                .as_ref()
                .expect("store faults need a proxied store"),
        }
    }

    /// Applies `plan` on time and returns the fault state it caused. A fault is noted just
    /// before it starts and a recovery just after it is in force, so that a request is never
    /// counted as running while everything answered when it may not have.
    async fn run_schedule(&self, plan: &[Step], started: Instant) -> Timeline {
        let mut faults = Faults::HEALTHY;
        let mut timeline = vec![(started, faults)];
        for step in plan {
            tokio::time::sleep_until((started + step.at).into()).await;
            faults = faults.with(step.part, step.mode);
            if answers(step.mode) {
                self.proxy(step.part).set(step.mode).await;
                timeline.push((Instant::now(), faults));
            } else {
                timeline.push((Instant::now(), faults));
                self.proxy(step.part).set(step.mode).await;
            }
        }
        Timeline(timeline)
    }

    async fn heal(&self) {
        for proxy in self.regions.iter().chain(&self.store) {
            proxy.set(ProxyMode::Pass).await;
        }
    }

    /// Counts the records lacking a copy now, then waits (bounded) until there are none.
    async fn wait_until_repaired(&self) -> Repair {
        let store = self.open_store().await;
        let started = Instant::now();
        let at_end_of_load = incomplete_records(store.as_ref()).await;
        let stored_incomplete = self.quorum_creates().await;
        let mut left = at_end_of_load;
        while left > 0 && started.elapsed() < REPAIR_BOUND {
            tokio::time::sleep(Duration::from_millis(500)).await;
            left = incomplete_records(store.as_ref()).await;
        }
        Repair {
            stored_incomplete,
            at_end_of_load,
            left,
            took: started.elapsed(),
        }
    }

    /// `rkms_quorum_creates_total` summed over the servers: records stored incomplete.
    async fn quorum_creates(&self) -> u64 {
        let http = reqwest::Client::new();
        let mut total = 0.0;
        for server in &self.servers {
            total += server
                .metric_total(&http, "rkms_quorum_creates_total", "")
                .await;
        }
        total as u64
    }

    /// A client of the test's own, straight to the store, to inspect the records: opened from
    /// the servers' configuration as the servers open theirs.
    async fn open_store(&self) -> Arc<dyn Store> {
        let direct = self.backing.section_via(None);
        let text = server_config(&self.region_names, &self.regions, &direct);
        let settings = Settings::from_toml(&text, self.config_dir.path()).unwrap();
        open_store(&settings.store).await.unwrap()
    }

    /// The cause of every failed request in the servers' logs, region by region (see
    /// [`cause`]).
    fn failure_causes(&self) -> Vec<String> {
        let mut causes = Vec::new();
        for server in &self.servers {
            let log = server.log.lock().unwrap();
            causes.extend(
                log.iter()
                    .filter_map(|line| line.split_once("key request failed error="))
                    .map(|(_, error)| cause(error)),
            );
        }
        causes
    }
}

/// The servers' configuration: AWS KMS through the region proxies with the default timeouts
/// and request deadline (what a deployment runs), the cache off so that every request reaches
/// KMS, and a repairer that retries every second.
fn server_config(names: &[String], proxies: &[Proxy], store_section: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|r| format!("{r:?}")).collect();
    let key_ids: Vec<String> = names
        .iter()
        .map(|r| format!("{r} = \"alias/rkms-{r}\""))
        .collect();
    let endpoints: Vec<String> = names
        .iter()
        .zip(proxies)
        .map(|(r, p)| format!("{r} = \"http://{}\"", p.addr()))
        .collect();
    let straggler_wait = std::env::var("RKMS_CHAOS_STRAGGLER_WAIT_MS")
        .map(|ms| format!("straggler_wait_ms = {ms}\n"))
        .unwrap_or_default();
    format!(
        "[kms]\nprovider = \"aws\"\nregions = [{}]\nkey_ids = {{ {} }}\n{straggler_wait}[kms.endpoints]\n{}\n\
         [store]\n{store_section}\n[cache]\nenabled = false\n[repair]\ninterval_seconds = 1\n\
         {ANONYMOUS_PRINCIPAL}",
        quoted.join(", "),
        key_ids.join(", "),
        endpoints.join("\n"),
    )
}

/// Records that lack a copy of some region.
async fn incomplete_records(store: &dyn Store) -> usize {
    let mut incomplete = 0;
    let mut cursor = None;
    loop {
        let page = store.list(cursor.as_ref(), 1000).await.unwrap();
        for id in &page.ids {
            let stored = store.get(id).await.unwrap().expect("a listed record");
            let record = Record::decode(&stored.bytes).unwrap();
            if !record.current().missing.is_empty() || record.current().copies.len() < REGIONS {
                incomplete += 1;
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return incomplete,
        }
    }
}

/// How repair went after healing.
struct Repair {
    /// Creates stored with only their quorum of copies, over every server.
    stored_incomplete: u64,
    at_end_of_load: usize,
    left: usize,
    took: Duration,
}

// ---------------------------------------------------------------------------------------------
// Load

/// Create: the id was new; read: it had been handed out before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Create,
    Read,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
        }
    }
}

/// What a request got back.
#[derive(Debug, Clone)]
enum Answer {
    Key(String),
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// No JSON error body: a hang past the client timeout, a cut connection, or another body.
    Malformed {
        status: Option<u16>,
        what: String,
    },
}

/// One request of the load.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    id: String,
    started: Instant,
    ended: Instant,
    answer: Answer,
}

impl Outcome {
    fn key(&self) -> Option<&str> {
        match &self.answer {
            Answer::Key(key) => Some(key),
            _ => None,
        }
    }

    fn status(&self) -> Option<u16> {
        match &self.answer {
            Answer::Key(_) => Some(200),
            Answer::Error { status, .. } => Some(*status),
            Answer::Malformed { status, .. } => *status,
        }
    }

    fn latency(&self) -> Duration {
        self.ended - self.started
    }
}

/// Runs [`CLIENTS`] clients until `until` and returns every request they made.
async fn run_load(servers: &[Server], seed: u64, until: Instant) -> Vec<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let bases: Vec<String> = servers.iter().map(|s| s.key_url("id=")).collect();
    let handed_out = Mutex::new(Vec::new());
    let clients = (0..CLIENTS).map(|n| {
        let rng = StdRng::seed_from_u64(seed.wrapping_add(n + 1));
        run_client(n, rng, &http, &bases, &handed_out, until)
    });
    futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One client: asks a random server for a new id one time in five, else for a random id
/// already handed out (by any client), at most once per [`REQUEST_INTERVAL`].
async fn run_client(
    n: u64,
    mut rng: StdRng,
    http: &reqwest::Client,
    bases: &[String],
    handed_out: &Mutex<Vec<String>>,
    until: Instant,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut created = 0;
    // Staggered, so that the clients do not ask in bursts of 16.
    let mut next = Instant::now() + REQUEST_INTERVAL.mul_f64(n as f64 / CLIENTS as f64);
    loop {
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= until {
            return outcomes;
        }
        let known = {
            let ids = handed_out.lock().unwrap();
            (!ids.is_empty() && !rng.random_bool(NEW_ID_SHARE))
                .then(|| ids[rng.random_range(0..ids.len())].clone())
        };
        let (kind, id) = match known {
            Some(id) => (Kind::Read, id),
            None => {
                created += 1;
                (Kind::Create, format!("chaos-{n}-{created}"))
            }
        };
        let base = &bases[rng.random_range(0..bases.len())];
        let started = Instant::now();
        let answer = ask(http, &format!("{base}{id}")).await;
        let ended = Instant::now();
        if kind == Kind::Create && matches!(answer, Answer::Key(_)) {
            handed_out.lock().unwrap().push(id.clone());
        }
        outcomes.push(Outcome {
            kind,
            id,
            started,
            ended,
            answer,
        });
        next = (next + REQUEST_INTERVAL).max(ended);
    }
}

/// GETs a key URL and sorts out what came back.
async fn ask(http: &reqwest::Client, url: &str) -> Answer {
    let response = match http.get(url).send().await {
        Ok(response) => response,
        Err(e) => {
            return Answer::Malformed {
                status: None,
                what: format!("no answer: {e}"),
            }
        }
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => {
            return Answer::Malformed {
                status: Some(status),
                what: format!("body: {e}"),
            }
        }
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match (status, json["key"].as_str(), json["error_type"].as_str()) {
        (200, Some(key), _) => Answer::Key(key.to_owned()),
        (_, None, Some(error_type)) => Answer::Error {
            status,
            error_type: error_type.to_owned(),
            message: json["error_message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        _ => Answer::Malformed {
            status: Some(status),
            what: body,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// After the load

/// Every id handed out during the load, read once more from every server after healing.
struct ReadBack {
    reads: usize,
    /// Reads that needed more than one attempt (a breaker still open, say).
    retried: usize,
    /// `(id, server, what came back)` for every read that never returned the first key.
    mismatches: Vec<(String, usize, String)>,
    took: Duration,
}

/// The first key each handed-out id got.
fn first_keys(outcomes: &[Outcome]) -> BTreeMap<&str, &str> {
    let mut first: BTreeMap<&str, &Outcome> = BTreeMap::new();
    for outcome in outcomes.iter().filter(|o| o.key().is_some()) {
        let earliest = first.entry(&outcome.id).or_insert(outcome);
        if outcome.ended < earliest.ended {
            *earliest = outcome;
        }
    }
    first
        .into_iter()
        .filter_map(|(id, outcome)| Some((id, outcome.key()?)))
        .collect()
}

async fn read_back(servers: &[Server], outcomes: &[Outcome]) -> ReadBack {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let first = first_keys(outcomes);
    let reads = first
        .iter()
        .flat_map(|(id, key)| (0..servers.len()).map(move |s| (*id, *key, s)));
    let results: Vec<(&str, usize, Result<usize, String>)> = futures::stream::iter(reads)
        .map(|(id, key, s)| {
            let url = servers[s].key_url(&format!("id={id}"));
            let http = &http;
            async move { (id, s, read_again(http, &url, key).await) }
        })
        .buffer_unordered(CLIENTS as usize)
        .collect()
        .await;
    ReadBack {
        reads: results.len(),
        retried: results
            .iter()
            .filter(|(_, _, r)| r.as_ref().is_ok_and(|&n| n > 1))
            .count(),
        mismatches: results
            .into_iter()
            .filter_map(|(id, s, r)| Some((id.to_owned(), s, r.err()?)))
            .collect(),
        took: started.elapsed(),
    }
}

/// Reads `url` until it answers, up to [`READ_BACK_ATTEMPTS`] times a second apart: the
/// attempts it took to get `expected`, else what it got instead.
async fn read_again(http: &reqwest::Client, url: &str, expected: &str) -> Result<usize, String> {
    let mut last = String::new();
    for attempt in 1..=READ_BACK_ATTEMPTS {
        match ask(http, url).await {
            Answer::Key(key) if key == expected => return Ok(attempt),
            Answer::Key(_) => return Err("another key".into()),
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

/// What one soak observed.
struct Run {
    seed: u64,
    timeline: Timeline,
    outcomes: Vec<Outcome>,
    repair: Repair,
    read_back: ReadBack,
}

/// The invariants that hold whatever the faults.
fn check_invariants(run: &Run, report: &Report) {
    let internal: Vec<&Outcome> = run
        .outcomes
        .iter()
        .filter(|o| o.status() == Some(500))
        .collect();
    assert!(
        internal.is_empty(),
        "{} answers were 500, first {:?}\n{report}",
        internal.len(),
        internal.first()
    );

    let mut keys: HashMap<&str, Vec<&str>> = HashMap::new();
    for outcome in &run.outcomes {
        if let Some(key) = outcome.key() {
            keys.entry(&outcome.id).or_default().push(key);
        }
    }
    let two_keys: Vec<&&str> = keys
        .iter()
        .filter(|(_, k)| k.iter().any(|x| x != &k[0]))
        .map(|(id, _)| id)
        .collect();
    assert!(
        two_keys.is_empty(),
        "ids answered with two keys: {two_keys:?}\n{report}"
    );

    let lost = &run.read_back.mismatches;
    assert!(
        lost.is_empty(),
        "{} of {} reads after healing did not return the first key: {:?}\n{report}",
        lost.len(),
        run.read_back.reads,
        &lost[..lost.len().min(10)],
    );

    let malformed: Vec<&Outcome> = run
        .outcomes
        .iter()
        .filter(|o| matches!(o.answer, Answer::Malformed { .. }))
        .collect();
    assert!(
        malformed.is_empty(),
        "{} failures were no JSON error (first: {:?})\n{report}",
        malformed.len(),
        malformed.first(),
    );
}

// ---------------------------------------------------------------------------------------------
// Report

/// One request with the fault states during it, classified.
struct Judged<'a> {
    outcome: &'a Outcome,
    at_start: Faults,
    at_end: Faults,
    should_succeed: bool,
}

/// Judges a request by the fault states during it. A create should succeed when the store (see
/// [`store_answers`]) and at least [`MIN_REGIONS`] regions answered throughout. A read should succeed when the
/// store and at least one region holding a copy did; which regions hold one is not known here,
/// but every record holds at least `MIN_REGIONS` copies, so with `REGIONS - MIN_REGIONS + 1`
/// regions answering one of them surely does. A read with fewer regions answering (only in
/// scenario B) is left out of the availability figure, even when it could have succeeded.
fn judge<'a>(outcome: &'a Outcome, timeline: &Timeline) -> Judged<'a> {
    let states = timeline.during(outcome.started, outcome.ended);
    let store_answered = states.iter().all(|f| store_answers(f.store));
    let regions_answered = (0..REGIONS)
        .filter(|&i| states.iter().all(|f| answers(f.regions[i])))
        .count();
    let needed = match outcome.kind {
        Kind::Create => MIN_REGIONS,
        Kind::Read => REGIONS - MIN_REGIONS + 1,
    };
    Judged {
        outcome,
        at_start: states[0],
        at_end: *states.last().expect("a state holds at every moment"),
        should_succeed: store_answered && regions_answered >= needed,
    }
}

/// The availability table of one scenario, and the figures the test asserts on.
struct Report {
    text: String,
    /// `(kind, should have succeeded, did)`.
    availability: Vec<(Kind, usize, usize)>,
}

impl Report {
    fn new(scenario: &Scenario, run: &Run, deployment: &Deployment) -> Self {
        let judged: Vec<Judged> = run
            .outcomes
            .iter()
            .map(|o| judge(o, &run.timeline))
            .collect();
        let failed: Vec<&Judged> = judged
            .iter()
            .filter(|j| j.outcome.key().is_none())
            .collect();
        let (table, availability) = kind_table(&judged);
        let text = [
            format!(
                "\n== chaos: {} on {} (seed {}, {} s of load, {CLIENTS} clients, {} servers, {} fault changes) ==\n",
                scenario.name,
                deployment.backing.name,
                run.seed,
                scenario.load.as_secs(),
                deployment.servers.len(),
                run.timeline.0.len() - 1,
            ),
            table,
            "failures by error_message (ids elided; should = should have succeeded):\n".into(),
            counted(failed.iter().map(|j| format!("{} {}", judged_kind(j), failure_message(j.outcome)))),
            format!(
                "failures by fault state at start -> end (regions {}, then the store; \
                 P pass, R refuse, B blackhole, D delay, X reset):\n",
                deployment.region_names.join(" "),
            ),
            counted(failed.iter().map(|j| {
                format!("{} {} -> {}", judged_kind(j), j.at_start.label(), j.at_end.label())
            })),
            "server log, failed requests by cause (load and read-back; ids and numbers elided):\n".into(),
            counted(deployment.failure_causes().into_iter()),
            after_the_load(run),
        ]
        .concat();
        Self { text, availability }
    }

    /// Asserts that reads and creates each reached `min` among those that should have
    /// succeeded.
    fn check_availability(&self, min: f64) {
        for (kind, should, ok) in &self.availability {
            let reached = if *should == 0 {
                1.0
            } else {
                *ok as f64 / *should as f64
            };
            assert!(
                reached >= min,
                "{kind:?} availability {reached:.4} < {min}\n{self}"
            );
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Attempted, ok, failed, should have succeeded, did, latencies: a row per kind.
fn kind_table(judged: &[Judged]) -> (String, Vec<(Kind, usize, usize)>) {
    let mut text = "kind     attempted      ok  failed  should  ok|should  availability  p50 ms  p99 ms  max ms\n".to_owned();
    let mut availability = Vec::new();
    for kind in [Kind::Read, Kind::Create] {
        let of_kind: Vec<&Judged> = judged.iter().filter(|j| j.outcome.kind == kind).collect();
        let ok = of_kind.iter().filter(|j| j.outcome.key().is_some()).count();
        let should: Vec<&&Judged> = of_kind.iter().filter(|j| j.should_succeed).collect();
        let should_ok = should.iter().filter(|j| j.outcome.key().is_some()).count();
        let mut latencies: Vec<Duration> = of_kind.iter().map(|j| j.outcome.latency()).collect();
        latencies.sort();
        text += &format!(
            "{:<8} {:>9} {:>7} {:>7} {:>7} {:>10} {:>12} {:>7} {:>7} {:>7}\n",
            kind.name(),
            of_kind.len(),
            ok,
            of_kind.len() - ok,
            should.len(),
            should_ok,
            percent(should_ok, should.len()),
            millis(percentile(&latencies, 0.50)),
            millis(percentile(&latencies, 0.99)),
            millis(latencies.last().copied()),
        );
        availability.push((kind, should.len(), should_ok));
    }
    (text, availability)
}

/// `create should=true `: a failure's kind and whether it should have succeeded.
fn judged_kind(judged: &Judged) -> String {
    format!(
        "{:<6} should={:<5}",
        judged.outcome.kind.name(),
        judged.should_succeed
    )
}

/// A failure's status, `error_type` and elided `error_message` (or what came instead).
fn failure_message(outcome: &Outcome) -> String {
    match &outcome.answer {
        Answer::Error {
            status,
            error_type,
            message,
        } => {
            format!("{status} {error_type}: {}", elide(message))
        }
        Answer::Malformed { status, what } => {
            format!("{status:?} not a JSON error: {}", elide(what))
        }
        Answer::Key(_) => "ok".into(),
    }
}

/// Repair and read-back after healing.
fn after_the_load(run: &Run) -> String {
    let (repair, read_back) = (&run.repair, &run.read_back);
    format!(
        "records stored incomplete (quorum creates): {}; incomplete at the end of the load: {}; {} left {:.1} s after healing{}\n\
         read back after healing: {} reads in {:.1} s, {} needed a retry, {} never returned the first key\n",
        repair.stored_incomplete,
        repair.at_end_of_load,
        repair.left,
        repair.took.as_secs_f64(),
        if repair.left > 0 { " (the bound)" } else { "" },
        read_back.reads,
        read_back.took.as_secs_f64(),
        read_back.retried,
        read_back.mismatches.len(),
    )
}

/// Lines of `  count  item`, most frequent first: at most 12, and a line for the rest.
fn counted(items: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut text: String = sorted
        .iter()
        .take(12)
        .map(|(item, n)| format!("  {n:>6}  {item}\n"))
        .collect();
    let rest: usize = sorted.iter().skip(12).map(|(_, n)| n).sum();
    if rest > 0 {
        text += &format!("  {rest:>6}  (other)\n");
    }
    if sorted.is_empty() {
        text += "  none\n";
    }
    text
}

/// `text` with quoted strings replaced by `"…"` and free-standing numbers by `N`, so messages
/// that differ only in an id, a port or a duration fall into one group (region names such as
/// `us-east-1` stay).
fn elide(text: &str) -> String {
    let mut out = String::new();
    let (mut in_quotes, mut in_number, mut previous) = (false, false, ' ');
    for c in text.chars() {
        if c == '"' {
            out.push_str(if in_quotes { "…\"" } else { "\"" });
            in_quotes = !in_quotes;
        } else if !in_quotes {
            let free_standing = !(previous.is_alphanumeric() || previous == '-');
            if c.is_ascii_digit() && (in_number || free_standing) {
                if !in_number {
                    out.push('N');
                }
                in_number = true;
            } else {
                in_number = false;
                out.push(c);
            }
        }
        previous = c;
    }
    out
}

/// A failed request's cause from its server log line, region by region: `wrap: us-east-1
/// skipped: its circuit breaker is open…; us-west-1 no answer within the operation timeout`.
/// Failures other than the regions' (the store's) are only elided.
fn cause(error: &str) -> String {
    let Some((head, failures)) = error.split_once("\": KMS region ") else {
        return elide(error);
    };
    let action = head
        .split_once("could ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    let regions: Vec<String> = failures
        .split("; KMS region ")
        .map(|failure| {
            let (region, message) = failure.split_once(' ').unwrap_or((failure, ""));
            let message = message.trim_start_matches("is unavailable: ");
            let short: String = elide(message).chars().take(64).collect();
            format!("{region} {short}")
        })
        .collect();
    format!("{action}: {}", regions.join("; "))
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.2}%", 100.0 * part as f64 / whole as f64)
}

fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * q).round() as usize])
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or("-".into(), |d| d.as_millis().to_string())
}

#[test]
fn report_groups_keep_region_names_and_drop_ids_and_numbers() {
    assert_eq!(
        elide(r#"no KMS region could wrap the data key for id "chaos-3-17"; os error 104 in 2s"#),
        r#"no KMS region could wrap the data key for id "…"; os error N in Ns"#
    );
    assert_eq!(
        cause(
            r#"no KMS region could wrap the data key for id "chaos-1-2": KMS region us-east-12 is unavailable: no answer within the operation timeout; KMS region us-west-1 is unavailable: connection failed"#
        ),
        "wrap: us-east-12 no answer within the operation timeout; us-west-1 connection failed"
    );
}
