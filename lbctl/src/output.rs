//! Rendering a [`Plan`] for people (a table) and for programs (JSON, YAML), and the YAML form of
//! any other view (`-o yaml`).
use std::{fmt::Write as _, net::SocketAddr};

use comfy_table::{ContentArrangement, Table, presets};

use crate::plan::{Frontend, Plan};

/// What the BACKENDS column shows for a frontend with no backend.
pub const REFUSES: &str = "(none: refuses)";

/// The table columns.
pub const COLUMNS: [&str; 6] = [
    "SERVICE",
    "PORT NAME",
    "KIND",
    "FRONTEND",
    "BACKENDS",
    "AFFINITY",
];

/// A table of the frontends, then the skipped input and the warnings.
pub fn render_table(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Node: {}", plan.node);
    if plan.frontends.is_empty() {
        out.push_str("No frontends.\n");
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(COLUMNS);
        for frontend in &plan.frontends {
            table.add_row(row(frontend));
        }
        let _ = writeln!(out, "{table}");
    }
    if !plan.skipped.is_empty() {
        out.push_str("\nSkipped:\n");
        for skipped in &plan.skipped {
            let _ = writeln!(out, "  {}: {}", skipped.object, skipped.reason);
        }
    }
    if !plan.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for warning in &plan.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    out
}

fn row(frontend: &Frontend) -> [String; 6] {
    let address = SocketAddr::new(frontend.address, frontend.port);
    let backends = if frontend.backends.is_empty() {
        REFUSES.to_owned()
    } else {
        frontend
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let affinity = match frontend.affinity_timeout_seconds {
        Some(seconds) => format!("ClientIP {seconds}s"),
        None => "None".to_owned(),
    };
    [
        frontend.service.to_string(),
        frontend.port_name.to_string(),
        frontend.kind.to_string(),
        format!("{address}/{}", frontend.protocol),
        backends,
        affinity,
    ]
}

/// The plan as pretty-printed JSON (`node`, `frontends`, `skipped`; warnings are not included).
pub fn render_json(plan: &Plan) -> String {
    match serde_json::to_string_pretty(plan) {
        Ok(json) => json,
        // Serializing a Plan cannot fail (string keys, no non-finite floats); keep the output
        // valid JSON anyway.
        Err(error) => serde_json::json!({ "error": error.to_string() }).to_string(),
    }
}

/// Any serializable view as YAML (`-o yaml`), with serde-saphyr: the same fields and values as
/// the JSON form.
pub fn render_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut yaml = serde_saphyr::to_string(value)?;
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    Ok(yaml)
}
