//! `twill`, the CNI plugin binary. So far it answers `VERSION`; pod wiring (ADD, DEL,
//! CHECK, STATUS, GC) comes with the node daemon's IPAM and is refused with a spec error
//! until then, so a runtime never mistakes it for a working plugin.
#![forbid(unsafe_code)]

use std::io::Read as _;

/// Spec versions this plugin accepts in a network config, oldest first.
const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const CURRENT_VERSION: &str = "1.1.0";
/// CNI spec error codes 100 and up are the plugin's own.
const ERR_NOT_AVAILABLE: u32 = 100;

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    match command.as_str() {
        "VERSION" => {
            let reply = serde_json::json!({
                "cniVersion": CURRENT_VERSION,
                "supportedVersions": SUPPORTED_VERSIONS,
            });
            println!("{reply}");
        }
        _ => {
            // The config's version decides the error's version; read it if we can.
            let mut stdin = String::new();
            let _ = std::io::stdin().read_to_string(&mut stdin);
            let version = serde_json::from_str::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|c| c.get("cniVersion")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| CURRENT_VERSION.to_owned());
            let reply = serde_json::json!({
                "cniVersion": version,
                "code": ERR_NOT_AVAILABLE,
                "msg": format!("twill does not implement CNI_COMMAND {command:?} yet"),
                "details": "only VERSION is available in this build",
            });
            println!("{reply}");
            std::process::exit(1);
        }
    }
}
