//! Plain-text tables for terminal output.

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = r.get(i).map(String::as_str).unwrap_or("");
                    format!("{c:<w$}", w = width[i])
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push_str(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// Renders a status report as a table of members.
pub fn render_status(report: &crate::protocol::StatusReport) -> String {
    let mut t = Table::new([
        "member",
        "addr",
        "status",
        "incarnation",
        "services",
        "inflight",
        "weight",
        "cpu",
        "mem",
        "latency",
        "rtt",
        "link",
    ]);
    let mut unlinked = 0;
    for row in &report.members {
        let m = &row.member;
        let link = if m.name == report.node {
            "self"
        } else if row.connected {
            "up"
        } else {
            if !m.status.is_gone() {
                unlinked += 1;
            }
            "-"
        };
        // An RTT is only current while there is a link to measure it on.
        let rtt = row.rtt_us.filter(|_| row.connected);
        t.row([
            m.name.clone(),
            m.addr.clone(),
            m.status.to_string(),
            m.incarnation.to_string(),
            m.services.join(","),
            m.load.inflight.to_string(),
            m.load.capacity.to_string(),
            format!("{:.1}%", f64::from(m.load.cpu_permille) / 10.0),
            format!("{:.1}%", f64::from(m.load.mem_permille) / 10.0),
            format!("{:.2} ms", f64::from(m.load.latency_us) / 1000.0),
            rtt.map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            link.to_owned(),
        ]);
    }
    let mut out = t.render();
    if unlinked > 0 {
        out.push_str(&format!(
            "link -: {} has no connection to {unlinked} live member(s) now. In a mesh larger than \
             limits.max_peer_connections (32 by default) that is normal: a node links to a bounded \
             set of members and dials a service's nodes when it needs them. Failing dials are listed \
             below, if any.\n",
            report.node
        ));
    }
    if !report.routes.is_empty() {
        let mut r = Table::new(["service", "recent share of streams by node"]);
        for (svc, shares) in &report.routes {
            let cells: Vec<String> = shares.iter().map(|(n, f)| format!("{n} {:.0}%", f * 100.0)).collect();
            r.row([svc.clone(), cells.join(", ")]);
        }
        out.push('\n');
        out.push_str(&r.render());
    }
    let alone = report.members.iter().all(|m| m.member.name == report.node);
    let connected = report
        .members
        .iter()
        .any(|m| m.member.name != report.node && m.connected);
    if !report.unreachable.is_empty() {
        out.push('\n');
        if !connected {
            out.push_str("no peer reachable\n");
        }
        let mut r = Table::new(["unreachable", "failures", "reason", "last error"]);
        for u in &report.unreachable {
            r.row([
                u.target.clone(),
                u.failures.to_string(),
                u.reason.clone(),
                u.error.clone(),
            ]);
        }
        out.push_str(&r.render());
        let advice: std::collections::BTreeSet<(&str, &str)> = report
            .unreachable
            .iter()
            .map(|u| (u.reason.as_str(), u.advice.as_str()))
            .collect();
        for (reason, advice) in advice {
            out.push_str(&format!("{reason}: {advice}\n"));
        }
    }
    for c in &report.identity_clashes {
        out.push_str(&format!(
            "\nIDENTITY CLASH: two live processes hold node {}'s certificate; kept {}, refused {} ({} times). Two nodes with one name and certificate, or a stolen key: revoke it (quicmesh certs revoke)\n",
            c.node, c.kept, c.refused, c.count
        ));
    }
    if report.unreachable.is_empty() && alone && !connected {
        out.push_str("\nno peer known: this node was given no peers or discovery, or has not reached any yet\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_columns() {
        let mut t = super::Table::new(["a", "long"]);
        t.row(["xyz", "1"]);
        assert_eq!(t.render(), "a    long\n---  ----\nxyz  1\n");
    }

    #[test]
    fn a_member_without_a_link_is_explained_not_called_down() {
        use crate::gossip::{Member, Status};
        use crate::protocol::{MemberStatus, StatusReport};
        let row = |name: &str, connected: bool, status: Status| {
            let mut member = Member::new(name, "127.0.0.1:1", 1, Vec::new());
            member.status = status;
            MemberStatus {
                member,
                connected,
                rtt_us: Some(2_930),
            }
        };
        let report = StatusReport {
            node: "a".into(),
            version: "0".into(),
            members: vec![
                row("a", false, Status::Alive),
                row("b", true, Status::Alive),
                row("c", false, Status::Alive),
                row("d", false, Status::Dead),
            ],
            routes: Vec::new(),
            unreachable: Vec::new(),
            identity_clashes: Vec::new(),
        };
        let out = super::render_status(&report);
        let line = |n: &str| out.lines().find(|l| l.starts_with(n)).unwrap_or_default().to_owned();
        assert!(line("b ").ends_with("2.93 ms  up"), "{out}");
        assert!(
            line("c ").ends_with("-        -"),
            "an old RTT is not shown without a link: {out}"
        );
        assert!(!out.contains("down"), "{out}");
        assert!(out.contains("a has no connection to 1 live member(s)"), "{out}");
        assert!(out.contains("limits.max_peer_connections"), "{out}");
    }
}
