//! The deployment script `deploy/netns-mesh.sh check`: three node processes in three network
//! namespaces find each other through SRV records served by dnsmasq, form a full mesh, answer
//! a client that knows only the SRV name, and exit 0 on SIGTERM. Needs root and `ip netns`
//! (CI has both); elsewhere it says why it did not run.
#![allow(clippy::disallowed_methods)] // the shared test helpers read the clock; see clippy.toml

mod common;

use std::process::Command;

fn netns_usable() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| format!("no ip command: {e}"))?;
    if !ip.status.success() {
        return Err(format!("ip netns unusable: {}", String::from_utf8_lossy(&ip.stderr)));
    }
    Ok(())
}

#[test]
fn netns_mesh_script_forms_a_mesh_from_dnsmasq_srv_records() {
    if let Err(why) = netns_usable() {
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
