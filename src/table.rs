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
    for row in &report.members {
        let m = &row.member;
        let link = if m.name == report.node {
            "self"
        } else if row.connected {
            "up"
        } else {
            "down"
        };
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
            row.rtt_us
                .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            link.to_owned(),
        ]);
    }
    let mut out = t.render();
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
}
