//! YAML files (compose, provisioning, Prometheus config and rules) as
//! `serde_json::Value`, through yaml-rust2 (pure Rust, YAML 1.2).
#![allow(dead_code)]

use serde_json::{Map, Value};
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

/// Parses a YAML text holding exactly one document.
pub fn parse(text: &str) -> Result<Value, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.len() {
        1 => to_json(&docs[0]),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}

/// Reads and parses a YAML file; panics with the file name on any error.
pub fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn to_json(y: &Yaml) -> Result<Value, String> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(s) => {
            let f: f64 = s.parse().map_err(|_| format!("bad float {s:?}"))?;
            serde_json::Number::from_f64(f).map(Value::Number).unwrap_or_else(|| Value::String(s.clone()))
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                if m.insert(key.clone(), to_json(v)?).is_some() {
                    return Err(format!("duplicate key {key:?}"));
                }
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported here".into()),
        Yaml::BadValue => return Err("bad YAML value".into()),
    })
}
