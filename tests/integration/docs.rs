//! The configuration examples in the README and `examples/` stay valid.

use std::path::Path;

use tributary::{Config, Engine};

/// The environment the example's secrets come from; everything else takes its default.
fn example_env(name: &str) -> Option<String> {
    match name {
        "TRIBUTARY_ETL_PASSWORD" => Some("etl password".into()),
        "TRIBUTARY_DASHBOARD_TOKEN" => Some("a-long-random-dashboard-token".into()),
        "TRIBUTARY_TOKEN_SECRET" => Some("a-long-random-secret-shared-by-nodes".into()),
        "CRM_CLIENT_SECRET" => Some("crm client secret".into()),
        _ => None,
    }
}

#[test]
fn example_config_loads_and_builds_an_engine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("examples/tributary.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::parse(&text, Some(&path), &example_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sources.len(), 4);
    assert_eq!(config.materializations.len(), 2);
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"));
    tributary::server::Options::from_config(&config.server, &config.dir)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn readme_config_is_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/tributary.yaml")).unwrap();
    let block = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a yaml block");
    assert_eq!(
        block, example,
        "README's config example differs from examples/tributary.yaml"
    );
}
