//! The operator's list of broker settings (`deploy/operator/src/settings.rs`) against the
//! broker's own: every setting `coremq --help` names is either one a `CoremqCluster` may set
//! in `spec.config` or one the operator sets itself, and nothing else is.

use std::collections::BTreeSet;
use std::process::Command;

use coremq_operator::settings::{OWNED, SETTINGS};

#[test]
fn the_operator_knows_every_broker_setting_and_no_other() {
    let help = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let broker: BTreeSet<String> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .map(|flag| {
            flag.split([' ', '<', ','])
                .next()
                .unwrap()
                .replace('-', "_")
        })
        // `--no-pin` is `--pin-shards false`; `--help` and `--version` are not settings.
        .filter(|name| !["no_pin", "help", "version"].contains(&name.as_str()))
        .collect();
    let operator: BTreeSet<String> = SETTINGS
        .iter()
        .map(|(name, _)| name.to_string())
        .chain(OWNED.iter().map(|name| name.to_string()))
        .collect();
    assert!(
        broker.len() > 40,
        "read too few flags from --help: {broker:?}"
    );
    assert_eq!(
        broker.difference(&operator).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "broker settings the operator does not know"
    );
    assert_eq!(
        operator.difference(&broker).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "settings the operator knows that the broker does not have"
    );
}
