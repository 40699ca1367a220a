//! `meshguard-check FILE`: checks every meshguard plugin configuration in a plugin config
//! (JSON/YAML), an Istio WasmPlugin manifest or an Envoy YAML, with the filter's own parser, and
//! prints the same error text Envoy logs: for each configuration every error it finds (the first
//! is what Envoy would log; see `check::check_all` for the next ones). Exit status: 0 all valid,
//! 1 an invalid one, 2 nothing to check, unreadable input or no argument.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use meshguard::check::{check_all, find_plugin_configs, MAX_ERRORS};

    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: meshguard-check <config.json|config.yaml|wasmplugin.yaml|envoy.yaml>");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let found = match find_plugin_configs(&text) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("{path}: no meshguard plugin configuration found");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let mut invalid = 0;
    for f in &found {
        match check_all(f) {
            Ok(c) => println!(
                "{path}: {}: ok ({} provider(s), {} route(s))",
                f.location,
                c.providers.len(),
                c.policy.routes.len()
            ),
            Err(errors) => {
                invalid += 1;
                for e in &errors {
                    println!(
                        "{path}: {}: meshguard: invalid configuration: {e}",
                        f.location
                    );
                }
                if errors.len() >= MAX_ERRORS {
                    println!(
                        "{path}: {}: (stopped after {MAX_ERRORS} errors)",
                        f.location
                    );
                }
            }
        }
    }
    if invalid > 0 {
        println!(
            "{path}: {invalid} of {} meshguard configuration(s) invalid",
            found.len()
        );
    }
    let bad = invalid > 0;
    std::process::exit(i32::from(bad));
}

#[cfg(target_arch = "wasm32")]
fn main() {}
