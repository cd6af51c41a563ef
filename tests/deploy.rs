//! The Kubernetes example (`examples/kubernetes/*.yaml`) agrees with the proxy config held in
//! its ConfigMap: container ports match the `listen` ports, the probes hit `/readyz` and
//! `/healthz` on the admin port, every key of the pool and the admin token come from a Secret
//! that has them, the CA paths of `[tls]` are mounted from the CA Secret, the state dir is
//! writable, the app is pointed at the proxy and at a CA bundle it has, and the ServiceMonitor
//! scrapes a port the Service has. The embedded config passes `quota-proxy check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

const CONFIG_MAP: &str = "quota-proxy-config";
const CONFIG_KEY: &str = "quota-proxy.toml";
const CONFIG_PATH: &str = "/etc/quota-proxy/quota-proxy.toml";
const PROXY_CONTAINER: &str = "quota-proxy";

/// Every YAML document of every `*.yaml` file in `examples/kubernetes/`, with its file name.
fn documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("readable YAML");
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc =
                Value::deserialize(de).unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}"));
            if doc.is_null() {
                continue; // an empty document (e.g. a trailing `---`)
            }
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].is_string(),
                    "{name}: a document has no {field}: {doc:?}"
                );
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{name}: a {} has no metadata.name",
                kind(&doc)
            );
            docs.push((name.clone(), doc));
        }
    }
    docs
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// The one document of `kind` named `name`.
fn find<'a>(docs: &'a [(String, Value)], kind_: &str, name_: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| kind(d) == kind_ && name(d) == name_)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind_} named {name_:?}, found {}",
        found.len()
    );
    found[0]
}

fn all_of<'a>(docs: &'a [(String, Value)], kind_: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .filter(|d| kind(d) == kind_)
        .collect()
}

/// The key names a Secret holds (`data` and `stringData`).
fn secret_keys(secret: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(map) = secret[field].as_mapping() {
            keys.extend(map.keys().filter_map(|k| k.as_str().map(str::to_string)));
        }
    }
    keys
}

/// The config embedded in the ConfigMap, as text and parsed.
fn embedded_config(docs: &[(String, Value)]) -> (String, toml::Table) {
    let cm = find(docs, "ConfigMap", CONFIG_MAP);
    let text = str_of(&cm["data"][CONFIG_KEY], "ConfigMap data").to_string();
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the ConfigMap's {CONFIG_KEY} is not valid TOML: {e}"));
    (text, table)
}

fn listen_port(config: &toml::Table, section: &str) -> (String, u16) {
    let listen = config
        .get(section)
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or_else(|| panic!("[{section}] listen is not set in the ConfigMap's config"));
    let addr: std::net::SocketAddr = listen
        .parse()
        .unwrap_or_else(|e| panic!("[{section}] listen = {listen:?}: {e}"));
    (addr.ip().to_string(), addr.port())
}

/// Every `env = "..."` of every provider's key pool.
fn pool_envs(config: &toml::Table) -> Vec<String> {
    let mut envs = Vec::new();
    if let Some(providers) = config.get("providers").and_then(|p| p.as_table()) {
        for p in providers.values() {
            let pool = p
                .get("keys")
                .and_then(|k| k.get("pool"))
                .and_then(|p| p.as_array());
            for key in pool.into_iter().flatten() {
                if let Some(env) = key.get("env").and_then(|e| e.as_str()) {
                    envs.push(env.to_string());
                }
            }
        }
    }
    envs
}

struct Pod<'a> {
    deployment: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    fn containers(&self) -> impl Iterator<Item = &'a Value> {
        seq(&self.spec["initContainers"])
            .iter()
            .chain(seq(&self.spec["containers"]))
    }

    fn container(&self, name_: &str) -> &'a Value {
        self.containers()
            .find(|c| c["name"].as_str() == Some(name_))
            .unwrap_or_else(|| panic!("no container named {name_:?} in the Deployment"))
    }

    /// The app containers: every long-running container but the proxy.
    fn apps(&self) -> Vec<&'a Value> {
        seq(&self.spec["containers"])
            .iter()
            .filter(|c| c["name"].as_str() != Some(PROXY_CONTAINER))
            .collect()
    }

    fn volume(&self, name_: &str) -> &'a Value {
        seq(&self.spec["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(name_))
            .unwrap_or_else(|| panic!("no volume named {name_:?} in the pod"))
    }
}

/// The pod of the Deployment that runs the proxy.
fn pod(docs: &[(String, Value)]) -> Pod<'_> {
    let deployments = all_of(docs, "Deployment");
    let deployment = deployments
        .into_iter()
        .find(|d| {
            let spec = &d["spec"]["template"]["spec"];
            seq(&spec["initContainers"])
                .iter()
                .chain(seq(&spec["containers"]))
                .any(|c| c["name"].as_str() == Some(PROXY_CONTAINER))
        })
        .expect("a Deployment with a quota-proxy container");
    Pod {
        deployment,
        spec: &deployment["spec"]["template"]["spec"],
    }
}

/// The containerPort of `container` named `port_name`.
fn container_port(container: &Value, port_name: &str) -> u16 {
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| {
            panic!(
                "container {:?} has no port named {port_name:?}",
                container["name"]
            )
        })
}

/// A probe's or Service's port: a number, or the name of a port of `container`.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("bad port {n}")),
        Value::String(s) => container_port(container, s),
        other => panic!("bad port {other:?}"),
    }
}

/// `(secret name, key)` of the env var `var` of `container`, which must come from a Secret.
fn env_secret<'a>(container: &'a Value, var: &str) -> (&'a str, &'a str) {
    let entry = seq(&container["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .unwrap_or_else(|| panic!("container {:?} does not set {var}", container["name"]));
    let r = &entry["valueFrom"]["secretKeyRef"];
    (
        str_of(&r["name"], &format!("{var}: valueFrom.secretKeyRef.name")),
        str_of(&r["key"], &format!("{var}: valueFrom.secretKeyRef.key")),
    )
}

fn env_value<'a>(container: &'a Value, var: &str) -> &'a str {
    seq(&container["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| {
            panic!(
                "container {:?} does not set {var} to a value",
                container["name"]
            )
        })
}

/// The volume mount of `container` whose mountPath holds `path` (the longest such).
fn mount_for<'a>(container: &'a Value, path: &str) -> Option<&'a Value> {
    seq(&container["volumeMounts"])
        .iter()
        .filter(|m| {
            let mp = m["mountPath"].as_str().unwrap_or("").trim_end_matches('/');
            path == mp || path.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or("").len())
}

/// The Secret key that appears at `path` inside `container`, through a secret volume.
fn secret_file(
    docs: &[(String, Value)],
    pod: &Pod<'_>,
    container: &Value,
    path: &str,
) -> (String, String) {
    let mount = mount_for(container, path).unwrap_or_else(|| {
        panic!(
            "{path} is not on any volume mounted in {:?}",
            container["name"]
        )
    });
    let mp = str_of(&mount["mountPath"], "mountPath").trim_end_matches('/');
    let rel = path[mp.len()..].trim_start_matches('/');
    let volume = pod.volume(str_of(&mount["name"], "volumeMount name"));
    let secret_name = str_of(
        &volume["secret"]["secretName"],
        &format!(
            "volume {:?} (holding {path}) secret.secretName",
            volume["name"]
        ),
    );
    let key = match volume["secret"]["items"].as_sequence() {
        Some(items) => str_of(
            &items
                .iter()
                .find(|i| i["path"].as_str() == Some(rel))
                .unwrap_or_else(|| {
                    panic!("volume {:?} has no item with path {rel:?}", volume["name"])
                })["key"],
            "items[].key",
        )
        .to_string(),
        None => rel.to_string(),
    };
    let secret = find(docs, "Secret", secret_name);
    assert!(
        secret_keys(secret).contains(&key),
        "{path} comes from key {key:?} of Secret {secret_name:?}, which has only {:?}",
        secret_keys(secret)
    );
    (secret_name.to_string(), key)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector.as_mapping().is_some_and(|sel| {
        !sel.is_empty()
            && sel
                .iter()
                .all(|(k, v)| labels[k.as_str().unwrap_or("")] == *v)
    })
}

#[test]
fn manifests_agree_with_the_embedded_config() {
    let docs = documents();
    let (_, config) = embedded_config(&docs);
    let pod = pod(&docs);
    let proxy = pod.container(PROXY_CONTAINER);

    // The sidecar runs the config from the ConfigMap.
    assert!(
        str_of(&proxy["image"], "image").starts_with("quota-proxy"),
        "proxy image {:?}",
        proxy["image"]
    );
    let args: Vec<&str> = seq(&proxy["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["run", "-c", CONFIG_PATH], "proxy args");
    let cfg_mount = mount_for(proxy, CONFIG_PATH).expect("the config file is mounted");
    let cfg_volume = pod.volume(str_of(&cfg_mount["name"], "mount name"));
    assert_eq!(cfg_volume["configMap"]["name"].as_str(), Some(CONFIG_MAP));
    let rel = CONFIG_PATH[str_of(&cfg_mount["mountPath"], "mountPath")
        .trim_end_matches('/')
        .len()..]
        .trim_start_matches('/');
    assert!(
        cfg_mount["subPath"]
            .as_str()
            .is_some_and(|s| s == CONFIG_KEY)
            || rel == CONFIG_KEY,
        "{CONFIG_PATH} must be the ConfigMap's {CONFIG_KEY}"
    );

    // Ports.
    let (proxy_ip, proxy_port) = listen_port(&config, "proxy");
    let (admin_ip, admin_port) = listen_port(&config, "admin");
    assert_eq!(
        container_port(proxy, "proxy"),
        proxy_port,
        "containerPort `proxy` vs [proxy] listen"
    );
    assert_eq!(
        container_port(proxy, "admin"),
        admin_port,
        "containerPort `admin` vs [admin] listen"
    );
    assert_eq!(
        proxy_ip, "127.0.0.1",
        "the proxy listens on loopback: only the pod's containers use it"
    );
    assert_ne!(
        admin_ip, "127.0.0.1",
        "the admin port must be reachable by the kubelet's probes"
    );

    // Probes: readiness /readyz, liveness /healthz, on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &proxy[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(
            resolve_port(proxy, &get["port"]),
            admin_port,
            "{probe} port"
        );
    }
    if !proxy["startupProbe"].is_null() {
        let get = &proxy["startupProbe"]["httpGet"];
        assert!(
            matches!(get["path"].as_str(), Some("/readyz" | "/healthz")),
            "startupProbe path"
        );
        assert_eq!(
            resolve_port(proxy, &get["port"]),
            admin_port,
            "startupProbe port"
        );
    }

    // Keys: each pool `env` is set in the sidecar from a Secret that has it.
    let envs = pool_envs(&config);
    assert!(!envs.is_empty(), "the config has no key pool");
    for var in &envs {
        let (secret, key) = env_secret(proxy, var);
        let keys = secret_keys(find(&docs, "Secret", secret));
        assert!(
            keys.contains(&key.to_string()),
            "{var} reads key {key:?} of Secret {secret:?}, which has {keys:?}"
        );
        assert_eq!(
            key, var,
            "name the Secret's keys after the pool's env names"
        );
    }

    // The admin listener is off loopback, so it needs a token, also from a Secret.
    let token_env = config
        .get("admin")
        .and_then(|a| a.get("token_env"))
        .and_then(|t| t.as_str())
        .expect("[admin] token_env (admin listens off loopback)");
    let (token_secret, token_key) = env_secret(proxy, token_env);
    assert!(
        secret_keys(find(&docs, "Secret", token_secret)).contains(&token_key.to_string()),
        "admin token key {token_key:?} missing from Secret {token_secret:?}"
    );

    // The CA: [tls] ca_cert and ca_key are files of the CA Secret.
    let tls = config.get("tls").expect("[tls] (the CA paths)");
    let mut ca_secrets = Vec::new();
    for (field, expected_key) in [("ca_cert", "ca.crt"), ("ca_key", "ca.key")] {
        let path = tls
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("[tls] {field}"));
        assert!(
            path.starts_with('/'),
            "[tls] {field} = {path:?} should be absolute"
        );
        let (secret, key) = secret_file(&docs, &pod, proxy, path);
        assert_eq!(key, expected_key, "[tls] {field}");
        ca_secrets.push(secret);
    }
    assert_eq!(
        ca_secrets[0], ca_secrets[1],
        "ca.crt and ca.key come from one Secret"
    );

    // Security: non-root, read-only root filesystem, state on a writable volume.
    let non_root = proxy["securityContext"]["runAsNonRoot"]
        .as_bool()
        .or(pod.spec["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "runAsNonRoot");
    assert_eq!(
        proxy["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        proxy["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    let state_dir = config
        .get("state")
        .and_then(|s| s.get("dir"))
        .and_then(|d| d.as_str())
        .unwrap_or("state");
    let state_path = if state_dir.starts_with('/') {
        state_dir.to_string()
    } else {
        format!("{}/{state_dir}", proxy["workingDir"].as_str().unwrap_or(""))
    };
    let state_mount = mount_for(proxy, &state_path).unwrap_or_else(|| {
        panic!("[state] dir {state_path} is not on a volume (the root fs is read-only)")
    });
    assert_ne!(
        state_mount["readOnly"].as_bool(),
        Some(true),
        "the state volume must be writable"
    );
    let state_volume = pod.volume(str_of(&state_mount["name"], "mount name"));
    assert!(
        !state_volume["emptyDir"].is_null(),
        "the state dir is an emptyDir"
    );
    for field in ["requests", "limits"] {
        assert!(
            !proxy["resources"][field]["memory"].is_null(),
            "proxy resources.{field}.memory"
        );
    }

    // The app: pointed at the proxy, trusting a CA bundle it has mounted.
    let apps = pod.apps();
    assert!(!apps.is_empty(), "the pod has an app container");
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    for app in apps {
        for var in ["HTTP_PROXY", "HTTPS_PROXY"] {
            assert_eq!(env_value(app, var), proxy_url, "{var} of {:?}", app["name"]);
        }
        let no_proxy = env_value(app, "NO_PROXY");
        for host in ["localhost", "127.0.0.1", ".svc", ".cluster.local"] {
            assert!(
                no_proxy.split(',').any(|h| h == host),
                "NO_PROXY lacks {host}: {no_proxy}"
            );
        }
        let bundle = env_value(app, "SSL_CERT_FILE");
        for var in ["REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
            assert_eq!(
                env_value(app, var),
                bundle,
                "{var} and SSL_CERT_FILE name the same bundle"
            );
        }
        assert!(
            mount_for(app, bundle).is_some(),
            "the CA bundle {bundle} is not mounted in the app"
        );
        // The app never sees the CA key.
        for m in seq(&app["volumeMounts"]) {
            let v = pod.volume(str_of(&m["name"], "mount name"));
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                assert!(
                    !ca_secrets.contains(&secret.to_string()) || !v["secret"]["items"].is_null(),
                    "the app mounts the whole CA Secret (with ca.key)"
                );
            }
        }
    }

    // Prometheus annotations on the pod name the admin port.
    let annotations = &pod.deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin_port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn service_monitor_scrapes_the_admin_port() {
    let docs = documents();
    let (_, config) = embedded_config(&docs);
    let (_, admin_port) = listen_port(&config, "admin");
    let pod = pod(&docs);
    let proxy = pod.container(PROXY_CONTAINER);
    let pod_labels = &pod.deployment["spec"]["template"]["metadata"]["labels"];

    let monitors = all_of(&docs, "ServiceMonitor");
    assert!(!monitors.is_empty(), "no ServiceMonitor");
    for sm in monitors {
        assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
        let services: Vec<&Value> = all_of(&docs, "Service")
            .into_iter()
            .filter(|s| {
                labels_match(
                    &sm["spec"]["selector"]["matchLabels"],
                    &s["metadata"]["labels"],
                )
            })
            .collect();
        assert!(
            !services.is_empty(),
            "ServiceMonitor {:?} selects no Service",
            name(sm)
        );
        let endpoints = seq(&sm["spec"]["endpoints"]);
        assert!(
            !endpoints.is_empty(),
            "ServiceMonitor {:?} has no endpoints",
            name(sm)
        );
        for svc in services {
            assert!(
                labels_match(&svc["spec"]["selector"], pod_labels),
                "Service {:?} does not select the proxy's pods",
                name(svc)
            );
            for ep in endpoints {
                let port_name = str_of(&ep["port"], "endpoint port");
                let port = seq(&svc["spec"]["ports"])
                    .iter()
                    .find(|p| p["name"].as_str() == Some(port_name))
                    .unwrap_or_else(|| {
                        panic!("Service {:?} has no port named {port_name:?}", name(svc))
                    });
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                assert_eq!(
                    resolve_port(proxy, target),
                    admin_port,
                    "the scraped port is the admin port"
                );
                assert_eq!(ep["path"].as_str().unwrap_or("/metrics"), "/metrics");
                // /metrics needs the admin token: the endpoint sends it, from a Secret that has it.
                let cred = &ep["authorization"]["credentials"];
                let (secret, key) = (
                    str_of(&cred["name"], "credentials.name"),
                    str_of(&cred["key"], "credentials.key"),
                );
                assert!(
                    secret_keys(find(&docs, "Secret", secret)).contains(&key.to_string()),
                    "ServiceMonitor token: Secret {secret:?} has no key {key:?}"
                );
            }
        }
    }
}

#[test]
fn embedded_config_passes_check() {
    let docs = documents();
    let (text, config) = embedded_config(&docs);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(CONFIG_KEY);
    std::fs::write(&path, &text).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quota-proxy"));
    cmd.arg("check")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path());
    let mut placeholders: BTreeMap<String, String> = BTreeMap::new();
    for var in pool_envs(&config) {
        placeholders.insert(var, "placeholder-key-value".into());
    }
    if let Some(t) = config
        .get("admin")
        .and_then(|a| a.get("token_env"))
        .and_then(|t| t.as_str())
    {
        placeholders.insert(t.to_string(), "placeholder-admin-token".into());
    }
    cmd.envs(&placeholders);
    let out = cmd.output().expect("run quota-proxy check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the ConfigMap's config fails `quota-proxy check`:\n{text}"
    );
    assert!(
        !text.contains("placeholder-key-value") && !text.contains("placeholder-admin-token"),
        "check printed a secret:\n{text}"
    );
    assert!(text.contains("provider openai"), "{text}");
}
