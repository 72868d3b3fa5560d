//! The `etc/*.yaml` files as shipped, compiled in, and the one text edit
//! launchers make to them.
//!
//! Everything that starts the system — `quickorder up` (in one process),
//! `quickorder-bench` and `quickorder-chaos` (as separate processes) —
//! starts it from these files, so what they run is what a user deploys.
//! They are configured through the files' `${VAR}`s; the only other change
//! any launcher makes is [`replace_block`], which swaps a whole top-level
//! block (etcd discovery for direct addresses, for instance).

/// One configuration file of `etc/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippedConfig {
    /// Its file name in `etc/` (`order-srv.yaml`), also the name a launcher
    /// writes it under and quotes in errors.
    pub file: &'static str,
    /// The file's text as it is in the repository.
    pub text: &'static str,
}

/// `etc/coordinator.yaml`: dtm's keys, the store on MySQL.
pub const COORDINATOR: ShippedConfig =
    ShippedConfig { file: "coordinator.yaml", text: include_str!("../../../etc/coordinator.yaml") };
/// `etc/order-srv.yaml`: go-zero's `zrpc.RpcServerConf` plus `DB`.
pub const ORDER_SRV: ShippedConfig =
    ShippedConfig { file: "order-srv.yaml", text: include_str!("../../../etc/order-srv.yaml") };
/// `etc/stock-srv.yaml`: go-zero's `zrpc.RpcServerConf` plus `DB`.
pub const STOCK_SRV: ShippedConfig =
    ShippedConfig { file: "stock-srv.yaml", text: include_str!("../../../etc/stock-srv.yaml") };
/// `etc/order-api.yaml`: go-zero's `rest.RestConf` plus the two RPC clients.
pub const ORDER_API: ShippedConfig =
    ShippedConfig { file: "order-api.yaml", text: include_str!("../../../etc/order-api.yaml") };

/// Every shipped file, in start-up order.
pub const ALL: [ShippedConfig; 4] = [COORDINATOR, ORDER_SRV, STOCK_SRV, ORDER_API];

/// [`replace_block`] found no top-level block of that name.
#[derive(Debug, thiserror::Error)]
#[error("no top-level `{key}:` block to replace (has the file changed shape?)")]
pub struct MissingBlock {
    /// The key that was looked for.
    pub key: String,
}

/// Replaces the top-level YAML key `key` — its line and every following
/// line that is indented or blank — with `replacement` (which may be
/// empty). Fails when there is no such top-level key, so a reshaped
/// `etc/` file is noticed instead of silently run differently.
pub fn replace_block(yaml: &str, key: &str, replacement: &str) -> Result<String, MissingBlock> {
    let header = format!("{key}:");
    let mut out = String::with_capacity(yaml.len() + replacement.len());
    let mut lines = yaml.split_inclusive('\n').peekable();
    let mut found = false;
    while let Some(line) = lines.next() {
        if !found && line.starts_with(&header) {
            found = true;
            while let Some(next) = lines.peek() {
                let inside = next.starts_with(' ') || next.starts_with('\t') || next.trim().is_empty();
                if !inside {
                    break;
                }
                lines.next();
            }
            out.push_str(replacement);
            continue;
        }
        out.push_str(line);
    }
    if !found {
        return Err(MissingBlock { key: key.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_or_removed_whole() {
        let yaml = "Name: x\nEtcd:\n  Hosts: [a]\n  Key: k\n\nDB:\n  DataSource: y\n";
        assert_eq!(replace_block(yaml, "Etcd", "").unwrap(), "Name: x\nDB:\n  DataSource: y\n");
        assert_eq!(
            replace_block(yaml, "DB", "DB:\n  DataSource: z\n").unwrap(),
            "Name: x\nEtcd:\n  Hosts: [a]\n  Key: k\n\nDB:\n  DataSource: z\n"
        );
        assert!(replace_block(yaml, "Missing", "").is_err());
    }

    #[test]
    fn the_shipped_files_have_the_blocks_launchers_replace() {
        for (config, key) in [
            (ORDER_SRV, "Etcd"),
            (STOCK_SRV, "Etcd"),
            (ORDER_API, "OrderRpcConf"),
            (ORDER_API, "StockRpcConf"),
        ] {
            let replaced = replace_block(config.text, key, "").unwrap();
            assert!(!replaced.contains(&format!("\n{key}:")), "{} {key}", config.file);
        }
    }
}
