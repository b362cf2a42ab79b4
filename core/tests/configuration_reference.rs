//! `docs/configuration.md` is generated from the configuration struct (`core/src/config.rs`):
//! every key with its environment variable, type, default (from `Config::default()`) and doc
//! comment. This test renders it and fails when the file differs or a key has no doc comment;
//! `HERALD_WRITE_DOCS=1 cargo test -p herald-core --test configuration_reference` rewrites it.

// figment::Jail's closures return figment's own (large) error type.
#![allow(clippy::result_large_err)]

use herald_core::config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

struct Field {
    name: String,
    ty: String,
    doc: String,
    flatten: bool,
}

struct Struct {
    doc: String,
    fields: Vec<Field>,
}

/// The `pub struct`s of the file with their fields' doc comments, types and `flatten`.
fn parse_structs(src: &str) -> HashMap<String, Struct> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut doc: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim());
            continue;
        }
        if line.starts_with("#[") {
            continue;
        }
        let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            doc.clear();
            continue;
        };
        let mut s = Struct {
            doc: doc.join(" "),
            fields: Vec::new(),
        };
        doc.clear();
        let mut field_doc: Vec<&str> = Vec::new();
        let mut flatten = false;
        while i < lines.len() && lines[i].trim() != "}" {
            let f = lines[i].trim();
            i += 1;
            if let Some(d) = f.strip_prefix("///") {
                field_doc.push(d.trim());
            } else if f.starts_with("#[serde(flatten)]") {
                flatten = true;
            } else if let Some(rest) = f.strip_prefix("pub ") {
                let (fname, ty) = rest.split_once(':').expect("a field");
                s.fields.push(Field {
                    name: fname.trim().to_owned(),
                    ty: ty.trim().trim_end_matches(',').to_owned(),
                    doc: field_doc.join(" "),
                    flatten,
                });
                field_doc.clear();
                flatten = false;
            }
        }
        out.insert(name.to_owned(), s);
    }
    out
}

struct Row {
    key: String,
    ty: String,
    default: String,
    doc: String,
}

fn walk(structs: &HashMap<String, Struct>, name: &str, prefix: &str, rows: &mut Vec<Row>) {
    for f in &structs[name].fields {
        if f.flatten {
            walk(structs, &f.ty, prefix, rows);
            continue;
        }
        let key = if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}.{}", f.name)
        };
        if structs.contains_key(f.ty.as_str()) {
            walk(structs, &f.ty, &key, rows);
        } else {
            rows.push(Row {
                key,
                ty: type_name(&f.ty),
                default: String::new(),
                doc: f.doc.clone(),
            });
        }
    }
}

fn type_name(ty: &str) -> String {
    let (inner, optional) = match ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (inner, true),
        None => (ty, false),
    };
    let base = match inner {
        "String" => "string",
        "PathBuf" => "path",
        "bool" => "boolean",
        "Secret" => "secret",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer",
        other => other,
    };
    if optional {
        format!("{base}, optional")
    } else {
        base.to_owned()
    }
}

fn default_of(defaults: &Value, key: &str) -> String {
    let mut v = defaults;
    for part in key.split('.') {
        v = &v[part];
    }
    match v {
        Value::Null => "unset".to_owned(),
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// What `docs/configuration.md` must hold.
fn render() -> String {
    let src = include_str!("../src/config.rs");
    let structs = parse_structs(src);
    let mut rows = Vec::new();
    walk(&structs, "Config", "", &mut rows);
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for row in &mut rows {
        row.default = default_of(&defaults, &row.key);
    }
    let undocumented: Vec<&str> = rows
        .iter()
        .filter(|r| r.doc.is_empty())
        .map(|r| r.key.as_str())
        .collect();
    assert!(
        undocumented.is_empty(),
        "configuration keys without a doc comment in core/src/config.rs: {undocumented:?}"
    );

    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration struct (`core/src/config.rs`) by\n\
         `core/tests/configuration_reference.rs`; do not edit by hand (`HERALD_WRITE_DOCS=1 cargo\n\
         test -p herald-core --test configuration_reference` rewrites it).\n\n\
         Each key is read from, in order: the compiled default below, the TOML file given by\n\
         `--config FILE` or `HERALD_CONFIG` (sections as in the key: `[push.fcm]`,\n\
         `rate_per_s = 0`), then the environment variable (`HERALD_` and the key, upper case,\n\
         with `__` between sections). Secrets are never logged; `herald` refuses weak ones.\n",
    );
    let mut current: Option<String> = None;
    for row in &rows {
        let this = match row.key.rsplit_once('.') {
            Some((s, _)) => s.to_owned(),
            None => String::new(),
        };
        if current.as_deref() != Some(this.as_str()) {
            current = Some(this.clone());
            let section = this;
            let title = if section.is_empty() {
                "Top level".to_owned()
            } else {
                format!("`[{section}]`")
            };
            out.push_str(&format!("\n## {title}\n\n"));
            // The section's own doc comment: the struct the section is.
            let mut name = "Config".to_owned();
            for part in section.split('.').filter(|p| !p.is_empty()) {
                let f = structs[&name]
                    .fields
                    .iter()
                    .find(|f| f.name == part)
                    .expect("a section field");
                name = f.ty.clone();
            }
            let doc = &structs[&name].doc;
            if !doc.is_empty() && !section.is_empty() {
                out.push_str(&format!("{doc}\n\n"));
            }
            out.push_str("| key | environment | type | default | what it does |\n");
            out.push_str("|-----|-------------|------|---------|--------------|\n");
        }
        let env = format!("HERALD_{}", row.key.replace('.', "__").to_uppercase());
        out.push_str(&format!(
            "| `{}` | `{env}` | {} | {} | {} |\n",
            row.key,
            row.ty,
            row.default,
            row.doc.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn the_configuration_reference_is_generated_from_the_config_struct() {
    let rendered = render();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    if std::env::var_os("HERALD_WRITE_DOCS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/configuration.md is not what core/src/config.rs says: run \
         HERALD_WRITE_DOCS=1 cargo test -p herald-core --test configuration_reference"
    );
}

#[test]
fn every_key_of_the_reference_is_read_from_its_environment_variable() {
    // The reference's naming rule is the loader's: setting each documented variable of a few
    // kinds changes that key.
    let structs = parse_structs(include_str!("../src/config.rs"));
    let mut rows = Vec::new();
    walk(&structs, "Config", "", &mut rows);
    for key in [
        "push.fcm.rate_per_s",
        "fanout.batch_size",
        "inbox.retention_days",
    ] {
        assert!(rows.iter().any(|r| r.key == key), "{key} in the reference");
    }
    figment::Jail::expect_with(|jail| {
        jail.set_env("HERALD_PUSH__FCM__RATE_PER_S", "7");
        jail.set_env("HERALD_FANOUT__BATCH_SIZE", "123");
        jail.set_env("HERALD_INBOX__RETENTION_DAYS", "5");
        let c = Config::load(None).expect("loads");
        assert_eq!(c.push.fcm.limits.rate_per_s, 7);
        assert_eq!(c.fanout.batch_size, Some(123));
        assert_eq!(c.inbox.retention_days, 5);
        Ok(())
    });
}
