//! Loading the configuration: the built-in defaults, then the environment
//! (dtm's UPPER_SNAKE names), then the YAML file, merged as YAML trees and
//! only then converted into [`Config`] and validated.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use super::{Config, ConfigError};

impl Config {
    /// Loads the configuration: defaults, then the environment, then the
    /// file (if any, after `${VAR}` expansion), then [`Config::validate`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        let file = path.zip(file.as_deref());
        Config::from_sources(file, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the file (path, text) and the environment
    /// passed in, so tests do not have to mutate the process environment.
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let defaults =
            serde_yaml_ng::to_value(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut merged = Value::Mapping(Mapping::new());
        apply_env(&defaults, &mut merged, "", &env)?;
        if let Some((path, text)) = file {
            // The same `${VAR}` / `${VAR:-default}` expansion as every other
            // service of the workspace: textual, before parsing, comments skipped.
            let text = service_kit::config::expand_env(path, text, &env)?;
            let from_file: Value =
                serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse(e.to_string()))?;
            match from_file {
                Value::Null => {}
                Value::Mapping(_) => merge(&mut merged, from_file),
                _ => return Err(ConfigError::Parse("the top level must be a mapping of keys".into())),
            }
        }
        let config = typed(merged)?;
        config.validate()?;
        Ok(config)
    }
}

/// Converts the merged tree into [`Config`]. serde's message for a wrong
/// type ("invalid type: string, expected u16") does not say *where*; on
/// error, each top-level key is tried alone to name the culprit.
fn typed(merged: Value) -> Result<Config, ConfigError> {
    match serde_yaml_ng::from_value::<Config>(merged.clone()) {
        Ok(config) => Ok(config),
        Err(whole) => {
            if let Value::Mapping(map) = merged {
                for (key, value) in map {
                    let mut single = Mapping::new();
                    let name = key.as_str().unwrap_or("?").to_string();
                    single.insert(key, value);
                    if let Err(e) = serde_yaml_ng::from_value::<Config>(Value::Mapping(single)) {
                        return Err(ConfigError::Parse(format!("{name}: {e}")));
                    }
                }
            }
            Err(ConfigError::Parse(whole.to_string()))
        }
    }
}

/// `MicroService` → `MICRO_SERVICE`, `EndPoint` → `END_POINT`, `Db` → `DB`:
/// an underscore before every capital except the first, then upper case
/// (dtm's `toUnderscoreUpper`). Nested keys are joined with `_`.
pub fn env_var_name(path: &[&str]) -> String {
    path.iter()
        .map(|key| {
            let mut out = String::new();
            for (i, c) in key.chars().enumerate() {
                if i > 0 && c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Walks the defaults; for every leaf whose environment variable is set,
/// writes the variable's value at the same path into `out`.
fn apply_env(
    defaults: &Value,
    out: &mut Value,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Value::Mapping(map) = defaults else { return Ok(()) };
    for (key, default) in map {
        let Some(key) = key.as_str() else { continue };
        let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        if let Value::Mapping(_) = default {
            let child = entry(out, key);
            apply_env(default, child, &path, env)?;
            if matches!(child, Value::Mapping(m) if m.is_empty()) {
                remove(out, key);
            }
            continue;
        }
        let name = env_var_name(&path.split('.').collect::<Vec<_>>());
        let Some(raw) = env(&name) else { continue };
        // Numbers and booleans are parsed; everything else stays a string,
        // even if it looks like a number (a password "1234" must stay text).
        let value = match default {
            Value::Number(_) | Value::Bool(_) => serde_yaml_ng::from_str::<Value>(&raw)
                .ok()
                .filter(|v| v.is_number() || v.is_bool())
                .ok_or_else(|| {
                    ConfigError::Parse(format!("{name}={raw:?} is not a valid value for {path}"))
                })?,
            _ => Value::String(raw),
        };
        if let Value::Mapping(m) = out {
            m.insert(Value::String(key.to_string()), value);
        }
    }
    Ok(())
}

/// The mapping value at `key` in `out`, created empty if absent.
fn entry<'a>(out: &'a mut Value, key: &str) -> &'a mut Value {
    if !out.is_mapping() {
        *out = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(m) = out else { unreachable!("just made a mapping") };
    m.entry(Value::String(key.to_string())).or_insert_with(|| Value::Mapping(Mapping::new()))
}

fn remove(out: &mut Value, key: &str) {
    if let Value::Mapping(m) = out {
        m.remove(key);
    }
}

/// Deep-merges `top` over `base` (mappings merge key by key, anything else replaces).
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Mapping(base), Value::Mapping(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_mapping() && value.is_mapping() => merge(existing, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}
