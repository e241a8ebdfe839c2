//! Renders the Helm chart (`deploy/helm/coremq-operator`) as `helm template` would, for the
//! tests: no registry ships the helm binary to these machines, so the templates go through
//! gtmpl (Go's text/template in Rust) with the few Sprig functions the chart uses (`quote`,
//! `toYaml`, `nindent`) and Helm's `.Values`, `.Release` and `.Chart`. The chart keeps to
//! that subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gtmpl::{Func, FuncError, Value};
use serde_json::{Value as Json, json};

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/coremq-operator")
}

fn to_gtmpl(value: &Json) -> Value {
    match value {
        Json::Null => Value::Nil,
        Json::Bool(value) => Value::Bool(*value),
        Json::Number(number) => match number.as_i64() {
            Some(integer) => Value::from(integer),
            None => Value::from(number.as_f64().unwrap_or_default()),
        },
        Json::String(text) => Value::String(text.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_gtmpl).collect()),
        Json::Object(fields) => Value::Map(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), to_gtmpl(value)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(value) => json!(value),
        Value::String(text) => json!(text),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => json!(integer),
            None => json!(number.as_f64()),
        },
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(fields) | Value::Map(fields) => Json::Object(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), to_json(value)))
                .collect(),
        ),
    }
}

fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let text = match args.first() {
        Some(Value::String(text)) => text.clone(),
        Some(other) => to_json(other).to_string(),
        None => String::new(),
    };
    Ok(Value::String(serde_json::to_string(&text).unwrap()))
}

/// Sprig's `toYaml`: the value as a YAML block (flow style where it is empty).
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let value = to_json(args.first().unwrap_or(&Value::Nil));
    let text = serde_yaml_ng::to_string(&value).unwrap();
    Ok(Value::String(text.trim_end().to_string()))
}

/// Sprig's `nindent N TEXT`: a newline, then TEXT with each line indented by N spaces.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let width = match args.first() {
        Some(Value::Number(number)) => number.as_u64().unwrap_or(0) as usize,
        _ => 0,
    };
    let text = match args.get(1) {
        Some(Value::String(text)) => text.clone(),
        _ => String::new(),
    };
    let pad = " ".repeat(width);
    let indented: Vec<String> = text.lines().map(|line| format!("{pad}{line}")).collect();
    Ok(Value::String(format!("\n{}", indented.join("\n"))))
}

/// The chart's values with `overrides` merged in (objects merged, the rest replaced).
pub fn values(overrides: &Json) -> Json {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let mut values: Json = serde_yaml_ng::from_str(&text).unwrap();
    merge(&mut values, overrides);
    values
}

fn merge(target: &mut Json, patch: &Json) {
    match (target, patch) {
        (Json::Object(target), Json::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key.clone()).or_insert(Json::Null), value);
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Every object the chart makes with `overrides` on its values (release `coremq` in
/// namespace `coremq-system`), the CRDs first.
pub fn render(overrides: &Json) -> Vec<Json> {
    let dir = chart_dir();
    let chart: Json =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let context = json!({
        "Values": values(overrides),
        "Release": {"Name": "coremq", "Namespace": "coremq-system", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart["appVersion"]},
    });
    let mut objects = Vec::new();
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(dir.join("crds")).unwrap() {
        documents.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let mut templates: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    templates.sort();
    for path in templates {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut template = gtmpl::Template::default();
        template.add_funcs(&[
            ("quote", quote as Func),
            ("toYaml", to_yaml as Func),
            ("nindent", nindent as Func),
        ]);
        template
            .parse(text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let rendered = template
            .render(&gtmpl::Context::from(to_gtmpl(&context)))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        documents.push(rendered);
    }
    for document in documents {
        for part in document.split("\n---") {
            let value: Json = serde_yaml_ng::from_str(part)
                .unwrap_or_else(|error| panic!("not YAML ({error}):\n{part}"));
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}
