//! The deployment script `deploy/netns-mesh.sh check`: three node processes in three network
//! namespaces find each other through SRV records served by dnsmasq, form a full mesh, answer
//! a client that knows only the SRV name, and exit 0 on SIGTERM. Needs root and `ip netns`
//! (CI has both); elsewhere it says why it did not run.
#![allow(clippy::disallowed_methods)] // the shared test helpers read the clock; see clippy.toml

mod common;

use std::process::Command;

#[test]
fn netns_mesh_script_forms_a_mesh_from_dnsmasq_srv_records() {
    if let Err(why) = common::netns_usable() {
        println!("SKIPPED: deploy/netns-mesh.sh needs root and ip netns ({why})");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/netns-mesh.sh");
    let out = Command::new("bash")
        .args([script, "check"])
        .env("QUICMESH_BIN", common::bin())
        .env("QM_PREFIX", "qmt")
        .env("QM_STATE", state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "script failed: {stderr}");
    assert!(stderr.contains("check passed"), "{stderr}");
    // The SRV-only client entered through a priority-10 node and saw both peers up.
    assert!(
        stdout.starts_with("node alpha") || stdout.starts_with("node bravo"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches(" up\n").count() + usize::from(stdout.ends_with(" up")),
        2,
        "{stdout}"
    );
    // Nothing left behind.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("qmt-"),
        "namespaces left behind"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/quicmesh.service")).unwrap();
    // Point ExecStart at the binary under test: verify checks that it exists.
    let unit = unit.replace("/usr/local/bin/quicmesh", common::bin().to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quicmesh.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, but names them on stderr.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("quicmesh.service")).collect();
    assert!(out.status.success() && complaints.is_empty(), "{stderr}");
}

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn yaml_docs(path: &str) -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(format!("{DEPLOY}/{path}")).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(y: &yaml_rust2::Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}")).to_owned())
        .collect()
}

/// Runs `quicmesh <args> --print-config` with the container's config path swapped for
/// `config`, and returns the effective configuration it prints.
fn print_config(args: &[String], container_config: &str, config: &std::path::Path) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace(container_config, config.to_str().unwrap()))
        .collect();
    let out = Command::new(common::bin())
        .args(&args)
        .arg("--print-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quicmesh {}: {stderr}", args.join(" "));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn compose_file_describes_a_three_node_mesh_whose_command_lines_parse() {
    let docs = yaml_docs("compose/compose.yaml");
    let services = &docs[0]["services"];
    let dockerfile = services["n1"]["build"]["dockerfile"].as_str().unwrap();
    assert!(
        std::path::Path::new(&format!("{DEPLOY}/../{dockerfile}")).exists(),
        "{dockerfile}"
    );
    let names = ["n1", "n2", "n3"];
    let mut udp_ports = Vec::new();
    for n in names {
        let s = &services[n];
        assert!(!s.is_badvalue(), "service {n} missing");
        let volumes = strings(&s["volumes"]);
        assert!(
            volumes.contains(&"./node.toml:/etc/quicmesh/node.toml:ro".to_owned()),
            "{volumes:?}"
        );
        assert!(
            volumes.contains(&"./certs:/etc/quicmesh/certs:ro".to_owned()),
            "{volumes:?}"
        );
        udp_ports.push(strings(&s["ports"])[0].clone());
        let printed = print_config(
            &strings(&s["command"]),
            "/etc/quicmesh/node.toml",
            std::path::Path::new(&format!("{DEPLOY}/compose/node.toml")),
        );
        let cfg: quicmesh::NodeConfig = toml::from_str(&printed).unwrap();
        assert_eq!(cfg.name, n);
        assert_eq!(cfg.advertise.as_deref(), Some(format!("{n}:7400").as_str()));
        assert_eq!(
            cfg.tls.cert.to_str().unwrap(),
            format!("/etc/quicmesh/certs/node-{n}.crt")
        );
        assert_eq!(cfg.admin.listen, "0.0.0.0:7480");
        // Every node lists every node by its compose service name.
        for other in names {
            assert!(cfg.peers.contains(&format!("{other}:7400")), "{:?}", cfg.peers);
        }
        // The backend it serves is another service of the file.
        let backend = &cfg.services["echo"].backend;
        let host = backend.split(':').next().unwrap();
        assert!(
            !services[host].is_badvalue(),
            "backend host {host} is no compose service"
        );
    }
    udp_ports.sort();
    udp_ports.dedup();
    assert_eq!(udp_ports.len(), 3, "host ports collide: {udp_ports:?}");
    match Command::new("docker").args(["compose", "version"]).output() {
        Ok(o) if o.status.success() => {
            let out = Command::new("docker")
                .args([
                    "compose",
                    "-f",
                    &format!("{DEPLOY}/compose/compose.yaml"),
                    "config",
                    "-q",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        _ => println!("docker compose not installed: checked by parsing only"),
    }
}

#[test]
fn kubernetes_manifest_is_consistent_and_a_pods_command_line_parses() {
    let docs = yaml_docs("kubernetes/quicmesh.yaml");
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let (svc, cm, sts) = (find("Service"), find("ConfigMap"), find("StatefulSet"));
    assert_eq!(
        svc["spec"]["clusterIP"].as_str(),
        Some("None"),
        "the Service must be headless"
    );
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    let svc_name = svc["metadata"]["name"].as_str().unwrap();
    let port = &svc["spec"]["ports"][0];
    let srv = format!(
        "srv:_{}._{}.{svc_name}.{ns}.svc.cluster.local",
        port["name"].as_str().unwrap(),
        port["protocol"].as_str().unwrap().to_lowercase()
    );
    assert_eq!(sts["spec"]["serviceName"].as_str(), Some(svc_name));
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let secret = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .unwrap();
    let readme = std::fs::read_to_string(format!("{DEPLOY}/kubernetes/README.md")).unwrap();
    assert!(
        readme.contains(secret),
        "README does not say how to make Secret {secret}"
    );
    let probes: Vec<&str> = ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| container[*p]["httpGet"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(probes, ["/healthz", "/readyz"]);

    // The pod's command line, as Kubernetes expands it for quicmesh-0.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, cm["data"]["node.toml"].as_str().unwrap()).unwrap();
    let args: Vec<String> = strings(&container["args"])
        .iter()
        .map(|a| a.replace("$(POD_NAME)", "quicmesh-0").replace("$(POD_IP)", "10.1.2.3"))
        .collect();
    let printed = print_config(&args, "/etc/quicmesh/node.toml", &config);
    let cfg: quicmesh::NodeConfig = toml::from_str(&printed).unwrap();
    assert_eq!(cfg.name, "quicmesh-0");
    assert_eq!(cfg.advertise.as_deref(), Some("10.1.2.3:7400"));
    assert_eq!(
        cfg.discovery,
        vec![srv],
        "the ConfigMap discovers another name than the Service publishes"
    );
    assert_eq!(cfg.admin.listen, "0.0.0.0:7480");
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace as u64 > cfg.drain.grace.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed drain.grace"
    );
}

/// Issue 16, part 5: the Prometheus alerting rules in deploy/prometheus pass `promtool check
/// rules` (CI installs Debian's `prometheus` package for it), and every metric they name is
/// one a running node exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_pass_promtool_and_name_only_exported_metrics() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/quicmesh-alerts.yml");
    match Command::new("promtool").args(["check", "rules", rules]).output() {
        Ok(o) => assert!(
            o.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("promtool not run ({e}); install Debian's prometheus package (CI does)")
        }
        Err(e) => panic!("promtool: {e}; .ci/run installs it (Debian package prometheus)"),
    }
    // Every quicmesh_* name in an expression.
    let docs = yaml_docs("prometheus/quicmesh-alerts.yml");
    let mut named = std::collections::BTreeSet::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("quicmesh_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                named.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    assert!(named.len() >= 8, "{named:?}");
    // What a node exports, with a peer and a health-checked service so that every family has
    // a sample (families without one are not printed).
    let pki = common::Pki::new();
    let backend = common::tcp_backend(|r| r).await;
    let mut cfg = pki.node_config("a");
    cfg.admin.listen = "127.0.0.1:0".into();
    let check: quicmesh::health::CheckConfig =
        toml::from_str("kind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\n").unwrap();
    cfg.services.insert(
        "web".into(),
        quicmesh::config::ServiceConfig {
            check: Some(check),
            preconnect: 1,
            ..quicmesh::config::ServiceConfig::tcp(backend.to_string())
        },
    );
    let node = quicmesh::Node::builder(cfg).start().await.unwrap();
    let mut peer_cfg = pki.node_config("b");
    peer_cfg.peers = vec![node.local_addr().to_string()];
    let peer = quicmesh::Node::builder(peer_cfg).start().await.unwrap();
    let admin = node.admin_addr().unwrap();
    let metrics = common::eventually_async(
        std::time::Duration::from_secs(10),
        "a peer and a checked service",
        || async {
            let (_, m) = common::http(admin, "GET", "/metrics").await;
            if m.contains("quicmesh_peer_up{") && m.contains("quicmesh_service_healthy{") {
                Ok(m)
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await;
    let mut exported = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            let (name, kind) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            exported.insert(name.to_owned());
            if kind == "counter" {
                exported.insert(format!("{name}_total"));
            }
        }
    }
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the rules name metrics no node exports: {missing:?}"
    );
    peer.shutdown().await;
    node.shutdown().await;
}
