//! Finding a test service: an environment variable, else a testcontainers container where a
//! Docker engine runs, else a failure that says how to start the service.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

/// How to get a service for tests.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Environment variable holding the service's URL or address, e.g. `RKMS_TEST_POSTGRES_URL`.
    pub env_var: &'static str,
    /// Container image and tag for testcontainers, e.g. `("postgres", "16-alpine")`.
    pub image: (&'static str, &'static str),
    /// The port the service listens on inside the container.
    pub port: u16,
    /// Environment of the container.
    pub container_env: &'static [(&'static str, &'static str)],
    /// Arguments of the container's command, if it needs any.
    pub container_cmd: &'static [&'static str],
    /// A log line (on stdout or stderr) that says the service is ready.
    pub ready_message: &'static str,
    /// Whether `ready_message` appears on stderr rather than stdout.
    pub ready_on_stderr: bool,
    /// Builds the URL from the container's mapped `host:port`.
    pub url: fn(&str) -> String,
}

/// Started containers by environment variable name, with their URLs.
type Started = Mutex<HashMap<&'static str, (String, Container<GenericImage>)>>;

/// Containers started by this test process, kept running until it exits.
fn containers() -> &'static Started {
    static CONTAINERS: OnceLock<Started> = OnceLock::new();
    CONTAINERS.get_or_init(Mutex::default)
}

/// The service's URL: from `spec.env_var` if set; else from a container this process starts
/// (once) with testcontainers; else panics with how to start the service.
pub fn endpoint(spec: &ServiceSpec) -> String {
    if let Ok(url) = std::env::var(spec.env_var) {
        if !url.is_empty() {
            return url;
        }
    }
    let mut started = containers().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((url, _)) = started.get(spec.env_var) {
        return url.clone();
    }
    // The blocking runner makes its own runtime, which must not nest in the test's.
    let spec_copy = *spec;
    let result = std::thread::spawn(move || start_container(&spec_copy))
        .join()
        .expect("the container thread");
    match result {
        Ok((url, container)) => {
            started.insert(spec.env_var, (url.clone(), container));
            url
        }
        Err(reason) => panic!(
            "{} is not set and no container could be started ({reason}). Start the test services \
             with `scripts/services.sh start && source .test-services/env`, or run the whole suite \
             with scripts/test.sh",
            spec.env_var
        ),
    }
}

fn start_container(spec: &ServiceSpec) -> Result<(String, Container<GenericImage>), String> {
    let ready = if spec.ready_on_stderr {
        WaitFor::message_on_stderr(spec.ready_message)
    } else {
        WaitFor::message_on_stdout(spec.ready_message)
    };
    let mut image = GenericImage::new(spec.image.0, spec.image.1)
        .with_exposed_port(spec.port.tcp())
        .with_wait_for(ready)
        .with_cmd(spec.container_cmd.iter().copied());
    for (name, value) in spec.container_env {
        image = image.with_env_var(*name, *value);
    }
    let container = image.start().map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(spec.port.tcp())
        .map_err(|e| e.to_string())?;
    Ok(((spec.url)(&format!("127.0.0.1:{port}")), container))
}
