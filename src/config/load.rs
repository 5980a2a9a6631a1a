//! Loading: TOML text plus `SIDEWIRE__SECTION__KEY` environment overrides in,
//! a validated [`Config`] or every [`ConfigIssue`] (named by key and line)
//! out. Pure but for [`Config::load`], which reads the file and the process
//! environment.

use super::Config;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `ws.max_connections`; empty for a syntax error.
    pub key: String,
    /// 1-based line in the file, when the key is written there.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Loading failed; every issue found is listed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::sync::Arc<std::io::Error> },
    #[error("invalid config{}:\n{}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(), list(.issues))]
    Invalid { path: Option<PathBuf>, issues: Vec<ConfigIssue> },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n")
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// No file: the built-in defaults (plus environment overrides).
    Defaults,
}

/// The default config file path.
pub const DEFAULT_PATH: &str = "config/sidewire.toml";

impl Config {
    /// Parses and validates TOML text, applying `env` overrides
    /// (`SIDEWIRE__SECTION__KEY`, value parsed as TOML, else taken as a string).
    pub fn from_toml(text: &str, env: &[(String, String)]) -> Result<Config, Vec<ConfigIssue>> {
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(vec![issue_from_toml(text, "", &e)]),
        };
        let mut issues = apply_env(&mut table, env);
        let mut unknown = Vec::new();
        // serde_ignored collects every unknown key; serde_path_to_error names
        // the key of a type error.
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            toml::Value::Table(table),
            &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
        ));
        for key in unknown {
            issues.push(ConfigIssue { line: line_of(text, &key), key, message: "unknown key".into() });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let key = e.path().to_string();
                let message = clean_message(&e.inner().to_string());
                issues.push(ConfigIssue { line: line_of(text, &key), message, key });
                return Err(issues);
            }
        };
        for (key, message) in config.validate() {
            issues.push(ConfigIssue { line: line_of(text, &key), key, message });
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// Loads `path`, or the defaults when `path` is `None` and the default
    /// file does not exist. Environment overrides come from the process.
    pub fn load(path: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                let config =
                    Config::from_toml("", &env).map_err(|issues| ConfigError::Invalid { path: None, issues })?;
                return Ok((config, ConfigSource::Defaults));
            }
            Err(e) => return Err(ConfigError::Read { path, source: std::sync::Arc::new(e) }),
        };
        match Config::from_toml(&text, &env) {
            Ok(c) => Ok((c, ConfigSource::File(path))),
            Err(issues) => Err(ConfigError::Invalid { path: Some(path), issues }),
        }
    }
}

/// Environment variables starting with this override single keys.
pub const ENV_PREFIX: &str = "SIDEWIRE__";

/// Applies `SIDEWIRE__SECTION__KEY=value` overrides to the parsed table.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.len() != 2 || parts.iter().any(String::is_empty) {
            issues.push(ConfigIssue {
                key: name.clone(),
                line: None,
                message: "environment overrides are named SIDEWIRE__SECTION__KEY".into(),
            });
            continue;
        }
        // A value that parses as a TOML value is taken as one (numbers, bools,
        // arrays); anything else is a plain string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let section = table.entry(parts[0].clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        match section {
            toml::Value::Table(t) => {
                t.insert(parts[1].clone(), value);
            }
            _ => issues.push(ConfigIssue { key: parts[0].clone(), line: None, message: "is not a table".into() }),
        }
    }
    issues
}

fn issue_from_toml(text: &str, key: &str, e: &toml::de::Error) -> ConfigIssue {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigIssue { key: key.to_string(), line, message: clean_message(e.message()) }
}

fn clean_message(msg: &str) -> String {
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg);
    first.split(" for key `").next().unwrap_or(first).trim().to_string()
}

/// The line where a dotted key (`section.key` or `section.counters[2]`) is
/// written, found by scanning table headers and `key =` lines.
pub fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let dotted = dotted.split('[').next().unwrap_or(dotted);
    let (section, key) = match dotted.split_once('.') {
        Some((s, k)) => (s, Some(k.split('.').next().unwrap_or(k))),
        None => (dotted, None),
    };
    let mut current = String::new();
    let mut section_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == section && section_line.is_none() {
                section_line = Some(i + 1);
            }
            if let Some(k) = key {
                if current == format!("{section}.{k}") {
                    return Some(i + 1);
                }
            }
            continue;
        }
        let Some(k) = key else { continue };
        if current == section {
            if let Some(rest) = line.strip_prefix(k) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.stats.counter_rules().len(), 3);
        assert_eq!(c.server.listen, "127.0.0.1:8790");
    }

    #[test]
    fn counters_empty_list_means_none() {
        let c = Config::from_toml("[stats]\ncounters = []\n", &[]).unwrap();
        assert!(c.stats.counter_rules().is_empty());
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_reported_with_its_line() {
        let text = "[server]\nlisten = \"nope\"\nlistne = 1\n\n[ws]\nmax_connections = 0\n[bogus]\nx = 1\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        let find = |k: &str| issues.iter().find(|i| i.key == k).unwrap_or_else(|| panic!("{k} in {issues:?}"));
        assert_eq!(find("server.listne").line, Some(3));
        assert_eq!(find("bogus").line, Some(7));
        assert_eq!(find("server.listen").line, Some(2));
        assert_eq!(find("ws.max_connections").line, Some(6));
    }

    #[test]
    fn type_error_names_key_and_line() {
        let issues = Config::from_toml("[ws]\nmax_replay = \"lots\"\n", &[]).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "ws.max_replay");
        assert_eq!(issues[0].line, Some(2));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let issues = Config::from_toml("[ws]\nmax_replay = = 3\n", &[]).unwrap_err();
        assert_eq!(issues[0].line, Some(2), "{issues:?}");
    }

    #[test]
    fn env_overrides_single_keys() {
        let env = vec![
            ("SIDEWIRE__WS__MAX_CONNECTIONS".to_string(), "7".to_string()),
            ("SIDEWIRE__SERVER__LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ("SIDEWIRE__AUTH__INGEST_TOKENS".to_string(), "[\"a\",\"b\"]".to_string()),
        ];
        let c = Config::from_toml("[ws]\nmax_connections = 3\n", &env).unwrap();
        assert_eq!(c.ws.max_connections, 7);
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.auth.ingest_tokens, vec!["a", "b"]);
    }
}
