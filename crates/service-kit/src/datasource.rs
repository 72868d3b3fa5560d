//! `DB.DataSource`: a database address in either of the forms people paste.
//!
//! * a sqlx URL: `mysql://root:pw@127.0.0.1:3306/dtm_gozero_order`,
//!   `postgres://…`, `sqlite:///var/lib/order.db?mode=rwc`;
//! * go-zero's Go-style DSN (go-sql-driver/mysql), as in the demo's YAML:
//!   `root:root@tcp(127.0.0.1:3306)/dtm-gozero-order?charset=utf8mb4&parseTime=true&loc=Asia%2FShanghai`.
//!
//! A Go DSN is translated into the equivalent sqlx URL. Its parameters:
//! `charset` and `collation` carry over; `parseTime`, `loc`, `timeout`,
//! `readTimeout`, `writeTimeout` only steer Go's driver (sqlx always decodes
//! DATETIME into chrono types) and are dropped; anything else is dropped
//! too and listed by [`DataSource::ignored_params`] so the service can warn.
//!
//! The password is a secret: [`Debug`](std::fmt::Debug) and
//! [`Display`](std::fmt::Display) print `***` in its place, and parse
//! errors never echo the input. Only [`DataSource::expose_url`] returns it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use url::Url;

/// Which SQL server a [`DataSource`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MySQL or MariaDB (the demo's choice).
    MySql,
    /// PostgreSQL.
    Postgres,
    /// SQLite (the embedded, one-process mode).
    Sqlite,
}

/// Why a data source string was rejected. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DataSource: {0}")]
pub struct DataSourceError(String);

/// A parsed database address; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct DataSource {
    /// The sqlx URL, password included: only [`DataSource::expose_url`]
    /// hands it out.
    url: String,
    /// What kind of server, decided once from the scheme.
    backend: Backend,
    /// Go DSN parameters that have no sqlx meaning and were dropped.
    ignored_params: Vec<String>,
}

impl DataSource {
    /// The sqlx connection URL, **including the password**. Pass it to a
    /// connect call; never log it (log the `DataSource` itself instead).
    pub fn expose_url(&self) -> &str {
        &self.url
    }

    /// The kind of server.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Go DSN parameters that were dropped during translation.
    pub fn ignored_params(&self) -> &[String] {
        &self.ignored_params
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut url) if self.backend != Backend::Sqlite => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                if pairs.iter().any(|(k, _)| k == "password") {
                    url.query_pairs_mut().clear().extend_pairs(
                        pairs
                            .iter()
                            .map(|(k, v)| (k.as_str(), if k == "password" { "***" } else { v.as_str() })),
                    );
                }
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }

    /// The database (schema) name for MySQL/PostgreSQL, `None` for SQLite
    /// or when the URL names none.
    pub fn database(&self) -> Option<String> {
        if self.backend == Backend::Sqlite {
            return None;
        }
        let url = Url::parse(&self.url).ok()?;
        let name = url.path().trim_start_matches('/');
        let name = percent_encoding::percent_decode_str(name).decode_utf8().ok()?;
        (!name.is_empty()).then(|| name.into_owned())
    }

    /// The same server without a database (MySQL) or on the maintenance
    /// database `postgres` (PostgreSQL): where to run `CREATE DATABASE` for a
    /// database that does not exist yet. `None` for SQLite.
    pub fn server_url(&self) -> Option<String> {
        let mut url = Url::parse(&self.url).ok()?;
        match self.backend {
            Backend::MySql => url.set_path("/"),
            Backend::Postgres => url.set_path("/postgres"),
            Backend::Sqlite => return None,
        }
        Some(url.to_string())
    }
}

impl FromStr for DataSource {
    type Err = DataSourceError;

    fn from_str(s: &str) -> Result<DataSource, DataSourceError> {
        let s = s.trim();
        let scheme = s.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        let backend = match scheme.as_deref() {
            Some("mysql" | "mariadb") => Some(Backend::MySql),
            Some("postgres" | "postgresql") => Some(Backend::Postgres),
            Some("sqlite") => Some(Backend::Sqlite),
            _ => None,
        };
        match backend {
            Some(Backend::Sqlite) => {
                Ok(DataSource { url: s.to_string(), backend: Backend::Sqlite, ignored_params: vec![] })
            }
            Some(backend) if s.contains("://") => {
                let url = Url::parse(s).map_err(|err| DataSourceError(format!("not a valid URL ({err})")))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(DataSourceError("the URL names no host".into()));
                }
                let mut url_text = url.to_string();
                if url.scheme() == "mariadb" {
                    url_text = url_text.replacen("mariadb://", "mysql://", 1);
                }
                Ok(DataSource { url: url_text, backend, ignored_params: vec![] })
            }
            _ => from_go_dsn(s),
        }
    }
}

/// Translates `user:pass@tcp(host:port)/db?params` (go-sql-driver/mysql).
fn from_go_dsn(dsn: &str) -> Result<DataSource, DataSourceError> {
    // Like the Go driver: the last '/' separates the database, the last '@'
    // before it the credentials (a password may contain '@' or ':').
    let slash = dsn.rfind('/').ok_or_else(|| {
        DataSourceError(
            "expected a sqlx URL (mysql://, postgres://, sqlite:) or a Go DSN user:pass@tcp(host:port)/db"
                .into(),
        )
    })?;
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let (database, params) = tail.split_once('?').unwrap_or((tail, ""));
    let (credentials, address) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let (user, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (c, None),
        },
        None => ("", None),
    };

    let mut socket = None;
    let host_port = match address.split_once('(') {
        Some(("tcp", rest)) => {
            let addr =
                rest.strip_suffix(')').ok_or_else(|| DataSourceError("unclosed tcp(...) address".into()))?;
            if addr.contains(':') { addr.to_string() } else { format!("{addr}:3306") }
        }
        Some(("unix", rest)) => {
            let path =
                rest.strip_suffix(')').ok_or_else(|| DataSourceError("unclosed unix(...) address".into()))?;
            socket = Some(path.to_string());
            "localhost".to_string()
        }
        Some((net, _)) => {
            return Err(DataSourceError(format!("unsupported network {net:?} (use tcp or unix)")));
        }
        None if address.is_empty() => "127.0.0.1:3306".to_string(),
        None => return Err(DataSourceError("expected tcp(host:port) before the database name".into())),
    };

    let mut url = Url::parse(&format!("mysql://{host_port}/"))
        .map_err(|err| DataSourceError(format!("bad address in tcp(...) ({err})")))?;
    if !user.is_empty() {
        url.set_username(user).map_err(|()| DataSourceError("cannot use that user name".into()))?;
    }
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        url.set_password(Some(password)).map_err(|()| DataSourceError("cannot use that password".into()))?;
    }
    let database = percent_encoding::percent_decode_str(database)
        .decode_utf8()
        .map_err(|_| DataSourceError("database name is not UTF-8".into()))?;
    url.set_path(&format!("/{database}"));

    let mut kept = Vec::new();
    let mut ignored_params = Vec::new();
    for (key, value) in url::form_urlencoded::parse(params.as_bytes()) {
        match key.as_ref() {
            "charset" => {
                kept.push(("charset".to_string(), value.split(',').next().unwrap_or("").to_string()))
            }
            "collation" => kept.push(("collation".to_string(), value.into_owned())),
            _ => ignored_params.push(key.into_owned()),
        }
    }
    if let Some(socket) = socket {
        kept.push(("socket".to_string(), socket));
    }
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    Ok(DataSource { url: url.to_string(), backend: Backend::MySql, ignored_params })
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DataSource").field(&self.redacted()).finish()
    }
}

impl<'de> Deserialize<'de> for DataSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DataSource, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_dsn_of_the_demo_becomes_a_sqlx_url() {
        let ds: DataSource =
            "root:root@tcp(127.0.0.1:3306)/dtm-gozero-order?charset=utf8mb4&parseTime=true&loc=Asia%2FShanghai"
                .parse()
                .unwrap();
        assert_eq!(ds.backend(), Backend::MySql);
        assert_eq!(ds.expose_url(), "mysql://root:root@127.0.0.1:3306/dtm-gozero-order?charset=utf8mb4");
        assert_eq!(ds.ignored_params(), ["parseTime", "loc"]);
        assert_eq!(ds.database().as_deref(), Some("dtm-gozero-order"));
        assert_eq!(ds.server_url().as_deref(), Some("mysql://root:root@127.0.0.1:3306/?charset=utf8mb4"));
    }

    #[test]
    fn passwords_with_special_characters_survive_and_never_print() {
        let ds: DataSource = "app:p@ss:w/rd@tcp(db)/shop".parse().unwrap();
        let url = Url::parse(ds.expose_url()).unwrap();
        assert_eq!(url.username(), "app");
        assert_eq!(
            percent_encoding::percent_decode_str(url.password().unwrap()).decode_utf8().unwrap(),
            "p@ss:w/rd"
        );
        assert_eq!(url.port(), Some(3306));
        for shown in [ds.to_string(), format!("{ds:?}"), ds.redacted()] {
            assert!(!shown.contains("p%40ss") && !shown.contains("p@ss"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn sqlx_urls_pass_through() {
        let ds: DataSource = "postgres://u:secret@h:5432/orders?password=other".parse().unwrap();
        assert_eq!(ds.backend(), Backend::Postgres);
        assert!(ds.expose_url().contains("secret"));
        assert!(!ds.redacted().contains("secret") && !ds.redacted().contains("other"), "{}", ds.redacted());
        assert_eq!(ds.server_url().as_deref(), Some("postgres://u:secret@h:5432/postgres?password=other"));

        let ds: DataSource = "sqlite:///tmp/order.db?mode=rwc".parse().unwrap();
        assert_eq!(ds.backend(), Backend::Sqlite);
        assert_eq!(ds.server_url(), None);

        let ds: DataSource = "mariadb://root@h/x".parse().unwrap();
        assert_eq!(ds.expose_url(), "mysql://root@h/x");
    }

    #[test]
    fn garbage_is_rejected_without_echoing_it() {
        for bad in ["hunter2", "root:hunter2@udp(h)/db", "root:hunter2@tcp(h/db"] {
            let err = bad.parse::<DataSource>().unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
