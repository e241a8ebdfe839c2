//! `kafka-codegen [--check]`: generates coremq's Kafka message codecs from Kafka's official
//! JSON schemas (`net/schemas/*.json`) into `net/src/protocol/messages/`, one module per
//! message, the way Kafka (`MessageGenerator`) and Redpanda do it. `--check` regenerates in
//! memory and fails if the committed files differ.
//!
//! Each message becomes a struct holding the union of its fields over all versions, with the
//! schema's defaults, and a `Message` implementation: `decode` reads the fields present in
//! the version asked for (classic or compact encodings by the flexible versions, tagged
//! fields by tag, unknown tags skipped); `encode` writes them, leaving out tagged fields
//! that hold their default (old librdkafka misreads them otherwise).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// An inclusive version range; `None` is "none".
#[derive(Debug, Clone, Copy)]
struct Versions(Option<(i16, i16)>);

impl Versions {
    fn parse(text: &str) -> Versions {
        let text = text.trim();
        if text == "none" {
            return Versions(None);
        }
        if let Some(min) = text.strip_suffix('+') {
            return Versions(Some((min.parse().expect("version"), i16::MAX)));
        }
        if let Some((min, max)) = text.split_once('-') {
            return Versions(Some((
                min.parse().expect("version"),
                max.parse().expect("version"),
            )));
        }
        let only = text.parse().expect("version");
        Versions(Some((only, only)))
    }

    /// Intersection with the message's valid versions.
    fn within(self, valid: Versions) -> Versions {
        match (self.0, valid.0) {
            (Some((a, b)), Some((c, d))) if a.max(c) <= b.min(d) => {
                Versions(Some((a.max(c), b.min(d))))
            }
            _ => Versions(None),
        }
    }

    fn is_none(self) -> bool {
        self.0.is_none()
    }

    /// A Rust condition on `version`, `None` when always true within `valid`.
    fn condition(self, valid: Versions) -> Option<String> {
        let (min, max) = self.0?;
        let (valid_min, valid_max) = valid.0.expect("message versions");
        let low = (min > valid_min).then(|| format!("version >= {min}"));
        let high = (max < valid_max).then(|| format!("version <= {max}"));
        match (low, high) {
            (None, None) => None,
            (Some(low), None) => Some(low),
            (None, Some(high)) => Some(high),
            (Some(_), Some(_)) => Some(format!("({min}..={max}).contains(&version)")),
        }
    }
}

/// Field types of the schema language.
#[derive(Debug, Clone)]
enum Type {
    Bool,
    Int8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Float64,
    String,
    Bytes,
    Records,
    Uuid,
    Struct(String),
    Array(Box<Type>),
}

impl Type {
    fn parse(text: &str) -> Type {
        if let Some(inner) = text.strip_prefix("[]") {
            return Type::Array(Box::new(Type::parse(inner)));
        }
        match text {
            "bool" => Type::Bool,
            "int8" => Type::Int8,
            "int16" => Type::Int16,
            "uint16" => Type::Uint16,
            "int32" => Type::Int32,
            "uint32" => Type::Uint32,
            "int64" => Type::Int64,
            "float64" => Type::Float64,
            "string" => Type::String,
            "bytes" => Type::Bytes,
            "records" => Type::Records,
            "uuid" => Type::Uuid,
            name => Type::Struct(name.to_string()),
        }
    }

    /// The Rust type of a non-null value.
    fn rust(&self) -> String {
        match self {
            Type::Bool => "bool".into(),
            Type::Int8 => "i8".into(),
            Type::Int16 => "i16".into(),
            Type::Uint16 => "u16".into(),
            Type::Int32 => "i32".into(),
            Type::Uint32 => "u32".into(),
            Type::Int64 => "i64".into(),
            Type::Float64 => "f64".into(),
            Type::String => "String".into(),
            Type::Bytes => "Bytes".into(),
            Type::Records => "Records".into(),
            Type::Uuid => "Uuid".into(),
            Type::Struct(name) => name.clone(),
            Type::Array(inner) => format!("Vec<{}>", inner.rust()),
        }
    }

    fn primitive_name(&self) -> Option<&'static str> {
        Some(match self {
            Type::Bool => "bool",
            Type::Int8 => "i8",
            Type::Int16 => "i16",
            Type::Uint16 => "u16",
            Type::Int32 => "i32",
            Type::Uint32 => "u32",
            Type::Int64 => "i64",
            Type::Float64 => "f64",
            Type::Uuid => "uuid",
            _ => return None,
        })
    }
}

struct Field {
    name: String,
    rust_name: String,
    kind: Type,
    about: String,
    versions: Versions,
    nullable: Versions,
    tagged: Option<(u32, Versions)>,
    /// A field-level override of the message's flexible versions (strings in headers).
    flexible: Option<Versions>,
    default: Option<String>,
}

struct Struct {
    name: String,
    about: String,
    fields: Vec<Field>,
}

struct Schema {
    name: String,
    kind: String,
    api_key: i16,
    valid: Versions,
    flexible: Versions,
    source: String,
    structs: Vec<Struct>,
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (index, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let previous_lower = index > 0 && chars[index - 1].is_ascii_lowercase();
            let next_lower = chars.get(index + 1).is_some_and(|n| n.is_ascii_lowercase());
            let previous_upper = index > 0 && chars[index - 1].is_ascii_uppercase();
            if index > 0 && (previous_lower || (previous_upper && next_lower)) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    match out.as_str() {
        "type" | "match" | "ref" | "loop" | "move" | "static" | "struct" => format!("r#{out}"),
        _ => out,
    }
}

fn parse_fields(value: &Value, structs: &mut Vec<Struct>) -> Vec<Field> {
    let Some(fields) = value.as_array() else {
        return Vec::new();
    };
    fields
        .iter()
        .map(|field| {
            let text = |key: &str| field.get(key).and_then(Value::as_str);
            let name = text("name").expect("field name").to_string();
            let type_text = text("type").expect("field type");
            let kind = Type::parse(type_text);
            if let Some(inner) = field.get("fields") {
                let struct_name = type_text.trim_start_matches("[]").to_string();
                let fields = parse_fields(inner, structs);
                structs.push(Struct {
                    name: struct_name,
                    about: text("about").unwrap_or_default().to_string(),
                    fields,
                });
            }
            let versions = Versions::parse(text("versions").expect("field versions"));
            let nullable = text("nullableVersions").map_or(Versions(None), Versions::parse);
            let tagged = field.get("tag").map(|tag| {
                (
                    tag.as_u64().expect("numeric tag") as u32,
                    Versions::parse(text("taggedVersions").expect("tagged versions")),
                )
            });
            let default = field.get("default").map(|value| match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            });
            Field {
                rust_name: snake_case(&name),
                name,
                kind,
                about: text("about").unwrap_or_default().to_string(),
                versions,
                nullable,
                tagged,
                flexible: text("flexibleVersions").map(Versions::parse),
                default,
            }
        })
        .collect()
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(path: &Path) -> Schema {
    let text = std::fs::read_to_string(path).expect("schema readable");
    let json: Value = serde_json::from_str(&strip_comments(&text))
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let name = json["name"].as_str().expect("name").to_string();
    let valid = Versions::parse(json["validVersions"].as_str().expect("validVersions"));
    let flexible = Versions::parse(json["flexibleVersions"].as_str().unwrap_or("none"));
    let mut structs = Vec::new();
    if let Some(common) = json.get("commonStructs").and_then(Value::as_array) {
        for common in common {
            let fields = parse_fields(&common["fields"], &mut structs);
            structs.push(Struct {
                name: common["name"].as_str().expect("struct name").to_string(),
                about: String::new(),
                fields,
            });
        }
    }
    let fields = parse_fields(&json["fields"], &mut structs);
    structs.push(Struct {
        name: name.clone(),
        about: String::new(),
        fields,
    });
    Schema {
        name,
        kind: json["type"].as_str().expect("type").to_string(),
        api_key: json.get("apiKey").and_then(Value::as_i64).unwrap_or(-1) as i16,
        valid,
        flexible,
        source: path.file_name().unwrap().to_string_lossy().into_owned(),
        structs,
    }
}

/// Doc comment lines wrapped to fit the 100-column limit at `indent`.
fn doc(out: &mut String, indent: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    let width = 100 - indent.len() - 4;
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            writeln!(out, "{indent}/// {line}").unwrap();
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    writeln!(out, "{indent}/// {line}").unwrap();
}

fn parse_integer(text: &str) -> i64 {
    if let Some(hex) = text.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).expect("hex default")
    } else {
        text.parse().expect("integer default")
    }
}

impl Field {
    fn is_nullable(&self) -> bool {
        !self.nullable.is_none()
    }

    fn rust_type(&self) -> String {
        match (&self.kind, self.is_nullable()) {
            (Type::Records, _) => "Option<Records>".into(),
            (kind, true) => format!("Option<{}>", kind.rust()),
            (kind, false) => kind.rust(),
        }
    }

    fn default_value(&self) -> String {
        let given = self.default.as_deref();
        let value = match &self.kind {
            Type::Bool => given.unwrap_or("false").to_string(),
            Type::Int8 | Type::Int16 | Type::Uint16 | Type::Int32 | Type::Uint32 | Type::Int64 => {
                given.map_or(0, parse_integer).to_string()
            }
            Type::Float64 => format!("{:?}", given.map_or(0.0, |g| g.parse::<f64>().unwrap())),
            Type::String => match given {
                Some("null") => return "None".into(),
                Some(text) => format!("String::from({text:?})"),
                None => "String::new()".into(),
            },
            Type::Records => return "None".into(),
            Type::Bytes | Type::Array(_) | Type::Struct(_) | Type::Uuid
                if given == Some("null") =>
            {
                return "None".into();
            }
            Type::Bytes => "Bytes::new()".into(),
            Type::Uuid => "Uuid::ZERO".into(),
            Type::Array(_) => "Vec::new()".into(),
            Type::Struct(name) => format!("{name}::default()"),
        };
        if self.is_nullable() {
            format!("Some({value})")
        } else {
            value
        }
    }
}

/// An expression decoding one value of `kind` (an `Option` when `nullable`).
fn decode_value(kind: &Type, nullable: bool, compact: &str, field: &str) -> String {
    let name = match kind {
        Type::String if nullable => return format!("decoder.nullable_string({compact})?"),
        Type::String => return format!("decoder.string({compact})?"),
        Type::Bytes if nullable => return format!("decoder.nullable_bytes({compact})?"),
        Type::Bytes => return format!("decoder.bytes({compact})?"),
        Type::Records => return format!("decoder.records({compact})?"),
        Type::Struct(name) => {
            assert!(!nullable, "nullable struct fields are not supported");
            return format!("{name}::decode(decoder, version)?");
        }
        Type::Array(inner) => {
            let item = decode_value(inner, false, compact, field);
            let item = item.strip_suffix('?').expect("decoders end in ?");
            let array = format!("decoder.array({compact}, |decoder| {item})?");
            return if nullable {
                array
            } else {
                format!("non_null({array}, {field:?})?")
            };
        }
        primitive => primitive.primitive_name().expect("primitive"),
    };
    assert!(!nullable, "nullable {name}");
    format!("decoder.{name}()?")
}

/// A statement encoding `value`: a place expression (`self.name`), or a reference to the
/// value when `by_ref` (an array item).
fn encode_value(kind: &Type, value: &str, by_ref: bool, nullable: bool, compact: &str) -> String {
    let reference = if by_ref {
        value.to_string()
    } else {
        format!("&{value}")
    };
    let copy = if by_ref {
        format!("*{value}")
    } else {
        value.to_string()
    };
    match kind {
        Type::String if nullable => {
            format!("encoder.nullable_string({value}.as_deref(), {compact});")
        }
        Type::String => format!("encoder.string({reference}, {compact});"),
        Type::Bytes if nullable => {
            format!("encoder.nullable_bytes({value}.as_deref(), {compact});")
        }
        Type::Bytes => format!("encoder.bytes({reference}, {compact});"),
        Type::Records => format!("encoder.records({value}.as_ref(), {compact});"),
        Type::Struct(_) => format!("{value}.encode(encoder, version);"),
        Type::Array(inner) => {
            let item = encode_value(inner, "item", true, false, compact);
            let items = if nullable {
                format!("{value}.as_deref()")
            } else {
                format!("Some({value}.as_slice())")
            };
            format!("encoder.array({items}, {compact}, |encoder, item| {{ {item} }});")
        }
        primitive => {
            let name = primitive.primitive_name().expect("primitive");
            format!("encoder.{name}({copy});")
        }
    }
}

fn generate_struct(out: &mut String, schema: &Schema, item: &Struct, top: bool) {
    let mut code = String::new();
    generate_struct_code(&mut code, schema, item, top);
    // Name the version parameter `_version` in functions that never look at it.
    for function in code.split_inclusive("\n    }\n") {
        let uses = function.contains("version");
        let name = if uses { "version" } else { "_version" };
        out.push_str(&function.replace("VERSION_PARAMETER", name));
    }
}

fn generate_struct_code(out: &mut String, schema: &Schema, item: &Struct, top: bool) {
    let valid = schema.valid;
    doc(out, "", &item.about);
    writeln!(out, "#[derive(Debug, Clone, PartialEq)]").unwrap();
    writeln!(out, "pub struct {} {{", item.name).unwrap();
    for field in &item.fields {
        if field.versions.within(valid).is_none() {
            continue;
        }
        doc(out, "    ", &field.about);
        writeln!(out, "    pub {}: {},", field.rust_name, field.rust_type()).unwrap();
    }
    writeln!(out, "}}\n").unwrap();

    writeln!(out, "impl Default for {} {{", item.name).unwrap();
    writeln!(out, "    fn default() -> {} {{", item.name).unwrap();
    writeln!(out, "        {} {{", item.name).unwrap();
    for field in &item.fields {
        if field.versions.within(valid).is_none() {
            continue;
        }
        writeln!(
            out,
            "            {}: {},",
            field.rust_name,
            field.default_value()
        )
        .unwrap();
    }
    writeln!(out, "        }}\n    }}\n}}\n").unwrap();

    let live: Vec<&Field> = item
        .fields
        .iter()
        .filter(|field| !field.versions.within(valid).is_none())
        .collect();
    let flexible_condition = match schema.flexible.within(valid).0 {
        None => "false".to_string(),
        Some(_) => schema
            .flexible
            .within(valid)
            .condition(valid)
            .unwrap_or_else(|| "true".into()),
    };
    let any_flexible = !schema.flexible.within(valid).is_none();
    let version = "VERSION_PARAMETER";

    let (signature_decode, signature_encode) = if top {
        (
            format!(
                "fn decode(decoder: &mut Decoder, {version}: i16) -> Result<{}>",
                item.name
            ),
            format!("fn encode(&self, encoder: &mut Encoder, {version}: i16)"),
        )
    } else {
        (
            format!(
                "pub fn decode(decoder: &mut Decoder, {version}: i16) -> Result<{}>",
                item.name
            ),
            format!("pub fn encode(&self, encoder: &mut Encoder, {version}: i16)"),
        )
    };
    if top {
        writeln!(out, "impl Message for {} {{", item.name).unwrap();
        writeln!(out, "    const NAME: &'static str = {:?};", schema.name).unwrap();
        writeln!(out, "    const API_KEY: i16 = {};", schema.api_key).unwrap();
        let (min, max) = valid.0.expect("valid versions");
        writeln!(out, "    const VERSION_MIN: i16 = {min};").unwrap();
        writeln!(out, "    const VERSION_MAX: i16 = {max};").unwrap();
        match schema.flexible.within(valid).0 {
            Some((first, _)) => {
                writeln!(out, "    const FLEXIBLE_MIN: Option<i16> = Some({first});").unwrap()
            }
            None => writeln!(out, "    const FLEXIBLE_MIN: Option<i16> = None;").unwrap(),
        }
        writeln!(out).unwrap();
    } else {
        writeln!(out, "impl {} {{", item.name).unwrap();
    }

    // Decode.
    writeln!(out, "    {signature_decode} {{").unwrap();
    if any_flexible {
        writeln!(out, "        let flexible = {flexible_condition};").unwrap();
    }
    let mutable = if live.is_empty() && !any_flexible {
        ""
    } else {
        "mut "
    };
    writeln!(out, "        let {mutable}this = {}::default();", item.name).unwrap();
    let compact_of = |field: &Field| -> String {
        match field.flexible {
            Some(versions) if versions.within(valid).is_none() => "false".into(),
            Some(versions) => versions
                .within(valid)
                .condition(valid)
                .unwrap_or_else(|| "true".into()),
            None if any_flexible => "flexible".into(),
            None => "false".into(),
        }
    };
    for field in live.iter().filter(|field| field.tagged.is_none()) {
        let compact = compact_of(field);
        let target = format!("this.{}", field.rust_name);
        let statement = decode_statement(field, &target, &compact, valid);
        match field.versions.within(valid).condition(valid) {
            Some(condition) => writeln!(out, "        if {condition} {{ {statement} }}").unwrap(),
            None => writeln!(out, "        {statement}").unwrap(),
        }
    }
    if any_flexible {
        writeln!(out, "        if flexible {{").unwrap();
        let tagged: Vec<&&Field> = live.iter().filter(|field| field.tagged.is_some()).collect();
        if tagged.is_empty() {
            writeln!(out, "            decoder.tagged_fields(|_, _| Ok(()))?;").unwrap();
        } else {
            writeln!(out, "            decoder.tagged_fields(|tag, decoder| {{").unwrap();
            writeln!(out, "                match tag {{").unwrap();
            for field in tagged {
                let (tag, versions) = field.tagged.unwrap();
                let target = format!("this.{}", field.rust_name);
                let statement = decode_statement(field, &target, "true", valid);
                match versions.within(valid).condition(valid) {
                    Some(condition) => writeln!(
                        out,
                        "                    {tag} if {condition} => {{ {statement} }}"
                    )
                    .unwrap(),
                    None => {
                        writeln!(out, "                    {tag} => {{ {statement} }}").unwrap()
                    }
                }
            }
            writeln!(out, "                    _ => {{}}").unwrap();
            writeln!(out, "                }}").unwrap();
            writeln!(out, "                Ok(())").unwrap();
            writeln!(out, "            }})?;").unwrap();
        }
        writeln!(out, "        }}").unwrap();
    }
    writeln!(out, "        Ok(this)").unwrap();
    writeln!(out, "    }}\n").unwrap();

    // Encode.
    writeln!(out, "    {signature_encode} {{").unwrap();
    if any_flexible {
        writeln!(out, "        let flexible = {flexible_condition};").unwrap();
    }
    for field in live.iter().filter(|field| field.tagged.is_none()) {
        let compact = compact_of(field);
        let statement = encode_statement(field, &compact, valid);
        match field.versions.within(valid).condition(valid) {
            Some(condition) => writeln!(out, "        if {condition} {{ {statement} }}").unwrap(),
            None => writeln!(out, "        {statement}").unwrap(),
        }
    }
    if any_flexible {
        let tagged: Vec<&&Field> = live.iter().filter(|field| field.tagged.is_some()).collect();
        writeln!(out, "        if flexible {{").unwrap();
        if tagged.is_empty() {
            writeln!(out, "            encoder.uvarint(0);").unwrap();
        } else {
            let mut sorted = tagged.clone();
            sorted.sort_by_key(|field| field.tagged.unwrap().0);
            let mut present = Vec::new();
            for field in &sorted {
                let (_, versions) = field.tagged.unwrap();
                let default = field.default_value();
                let mut condition = match default.as_str() {
                    "None" => format!("self.{}.is_some()", field.rust_name),
                    "false" => format!("self.{}", field.rust_name),
                    _ => format!("self.{} != {default}", field.rust_name),
                };
                if let Some(range) = versions.within(valid).condition(valid) {
                    condition = format!("{range} && {condition}");
                }
                present.push(condition);
            }
            writeln!(out, "            let present = [{}];", present.join(", ")).unwrap();
            writeln!(
                out,
                "            encoder.uvarint(present.iter().filter(|p| **p).count() as u32);"
            )
            .unwrap();
            for (index, field) in sorted.iter().enumerate() {
                let (tag, _) = field.tagged.unwrap();
                let statement = encode_statement(field, "true", valid);
                writeln!(
                    out,
                    "            if present[{index}] {{ encoder.tagged_field({tag}, |encoder| {{ {statement} }}); }}"
                )
                .unwrap();
            }
        }
        writeln!(out, "        }}").unwrap();
    }
    writeln!(out, "    }}").unwrap();
    writeln!(out, "}}\n").unwrap();
}

fn decode_statement(field: &Field, target: &str, compact: &str, valid: Versions) -> String {
    if !field.is_nullable() || matches!(field.kind, Type::Records) {
        return format!(
            "{target} = {};",
            decode_value(&field.kind, false, compact, &field.name)
        );
    }
    let nullable = decode_value(&field.kind, true, compact, &field.name);
    let plain = decode_value(&field.kind, false, compact, &field.name);
    let nullable_versions = field.nullable.within(valid);
    match nullable_versions.condition(valid) {
        None if !nullable_versions.is_none() => format!("{target} = {nullable};"),
        Some(condition) => {
            format!("{target} = if {condition} {{ {nullable} }} else {{ Some({plain}) }};")
        }
        None => format!("{target} = Some({plain});"),
    }
}

fn encode_statement(field: &Field, compact: &str, valid: Versions) -> String {
    let value = format!("self.{}", field.rust_name);
    if matches!(field.kind, Type::Records) {
        return encode_value(&field.kind, &value, false, true, compact);
    }
    if !field.is_nullable() {
        return encode_value(&field.kind, &value, false, false, compact);
    }
    let nullable = encode_value(&field.kind, &value, false, true, compact);
    // Where the version allows no null, a null is written as the empty value.
    let plain = encode_value(&field.kind, "value", true, false, compact);
    let fallback = format!(
        "let empty = Default::default(); let value = {value}.as_ref().unwrap_or(&empty); {plain}"
    );
    let nullable_versions = field.nullable.within(valid);
    match nullable_versions.condition(valid) {
        None if !nullable_versions.is_none() => nullable,
        Some(condition) => format!("if {condition} {{ {nullable} }} else {{ {fallback} }}"),
        None => fallback,
    }
}

fn generate(schema: &Schema) -> String {
    let mut body = String::new();
    let count = schema.structs.len();
    for (index, item) in schema.structs.iter().enumerate() {
        generate_struct(&mut body, schema, item, index + 1 == count);
    }
    let mut imports = vec!["Decoder", "Encoder", "Message", "Result"];
    for (name, used) in [
        ("Records", body.contains("Option<Records>")),
        ("Uuid", body.contains(": Uuid") || body.contains("<Uuid>")),
        ("non_null", body.contains("non_null(")),
    ] {
        if used {
            imports.push(name);
        }
    }
    imports.sort_by_key(|name| name.to_ascii_lowercase());
    let mut out = String::new();
    writeln!(
        out,
        "//! `{}` ({}{}).\n//! Generated by `kafka-codegen` from `net/schemas/{}`;\n//! do not edit.\n",
        schema.name,
        schema.kind,
        if schema.api_key >= 0 {
            format!(", API key {}", schema.api_key)
        } else {
            String::new()
        },
        schema.source
    )
    .unwrap();
    if body.contains("Bytes") {
        writeln!(out, "use bytes::Bytes;\n").unwrap();
    }
    writeln!(
        out,
        "use crate::protocol::codec::{{{}}};\n",
        imports.join(", ")
    )
    .unwrap();
    out.push_str(&body);
    out
}

fn rustfmt(code: &str) -> String {
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rustfmt runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let output = child.wait_with_output().expect("rustfmt finishes");
    assert!(output.status.success(), "rustfmt failed on generated code");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn main() {
    let check = std::env::args().any(|arg| arg == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let schemas = root.join("net/schemas");
    let target = root.join("net/src/protocol/messages");
    let mut files = BTreeMap::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&schemas)
        .expect("net/schemas exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut modules = Vec::new();
    for path in &paths {
        let schema = load(path);
        let module = snake_case(&schema.name);
        files.insert(format!("{module}.rs"), rustfmt(&generate(&schema)));
        modules.push((module, schema.name.clone()));
    }
    let mut index = String::from(
        "//! Kafka messages, generated by `kafka-codegen` from `net/schemas/`. Do not edit.\n\n\
         // The generator writes every `Default` out and decodes into a default value field by\n\
         // field, which keeps it simple; these lints would have it do otherwise.\n\
         #![allow(clippy::derivable_impls, clippy::field_reassign_with_default)]\n\n",
    );
    for (module, _) in &modules {
        writeln!(index, "pub mod {module};").unwrap();
    }
    writeln!(index).unwrap();
    for (module, name) in &modules {
        writeln!(index, "pub use {module}::{name};").unwrap();
    }
    files.insert("mod.rs".into(), rustfmt(&index));

    let mut stale = Vec::new();
    for (name, code) in &files {
        let path = target.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != *code {
            stale.push(name.clone());
            if !check {
                std::fs::create_dir_all(&target).unwrap();
                std::fs::write(&path, code).unwrap();
            }
        }
    }
    if check && !stale.is_empty() {
        eprintln!(
            "kafka-codegen: generated code is out of date ({}); run `cargo run -p coremq-tools --bin kafka-codegen`",
            stale.join(", ")
        );
        std::process::exit(1);
    }
    eprintln!(
        "kafka-codegen: {} messages, {} file(s) {}",
        modules.len(),
        stale.len(),
        if check { "differ" } else { "written" }
    );
}
