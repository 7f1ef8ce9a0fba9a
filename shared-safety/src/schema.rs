//! Validation of tool arguments against the catalog's closed JSON schemas.
//!
//! The catalog uses a small, fixed subset of JSON Schema ([`SCHEMA_KEYWORDS`]), and this
//! validator implements exactly that subset and refuses any schema keyword it does not know (so a schema can never silently
//! mean less than it says): `type`, `properties`, `required`, `additionalProperties` (must be
//! `false` on objects), `enum`, `minLength`, `maxLength`, `minimum`, `maximum`, `items`,
//! `minItems`, `maxItems`, `anyOf` (the value must match one branch; how the catalog admits a
//! decimal as a string or a number), and the annotations `description`, `title`, `default`,
//! `examples`. (`pattern` is deliberately absent: no regex engine runs on agent input.)

use protocol::catalog::{SCHEMA_KEYWORDS, ToolSpec};
use serde_json::{Map, Value};

/// Why arguments were refused. Carries the JSON path and the rule, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaViolation {
    pub path: String,
    pub rule: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}",
            self.rule,
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            }
        )
    }
}

/// Validates `arguments` (absent arguments count as `{}`) against a tool's input schema.
pub fn validate_arguments(tool: &ToolSpec, arguments: &Value) -> Result<(), SchemaViolation> {
    let schema = Value::Object(tool.input_schema_json());
    validate(&schema, arguments, &mut String::new())
}

fn violation(path: &str, rule: impl Into<String>) -> SchemaViolation {
    SchemaViolation {
        path: path.to_string(),
        rule: rule.into(),
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.as_i64().is_some() || value.as_u64().is_some(),
        _ => false,
    }
}

/// Validates one value against one schema node.
pub fn validate(schema: &Value, value: &Value, path: &mut String) -> Result<(), SchemaViolation> {
    let Some(schema) = schema.as_object() else {
        return Err(violation(path, "schema node is not an object"));
    };
    if let Some(unknown) = schema
        .keys()
        .find(|key| !SCHEMA_KEYWORDS.contains(&key.as_str()))
    {
        return Err(violation(
            path,
            format!("unsupported schema keyword `{unknown}`"),
        ));
    }
    if let Some(expected) = schema.get("type") {
        let allowed: Vec<&str> = match expected {
            Value::String(single) => vec![single.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => return Err(violation(path, "bad `type` in schema")),
        };
        if !allowed.iter().any(|t| type_matches(t, value)) {
            return Err(violation(
                path,
                format!("expected {}", allowed.join(" or ")),
            ));
        }
    }
    if let Some(branches) = schema.get("anyOf") {
        validate_any_of(branches, value, path)?;
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        return Err(violation(path, "value is not one of the allowed values"));
    }
    match value {
        Value::Object(map) => validate_object(schema, map, path)?,
        Value::Array(items) => validate_array(schema, items, path)?,
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                return Err(violation(path, format!("shorter than {min} characters")));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                return Err(violation(path, format!("longer than {max} characters")));
            }
        }
        Value::Number(number) => {
            // JSON numbers are finite, so comparisons are total here.
            let as_float = number.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && as_float.partial_cmp(&min) == Some(std::cmp::Ordering::Less)
            {
                return Err(violation(path, format!("below the minimum {min}")));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && as_float.partial_cmp(&max) == Some(std::cmp::Ordering::Greater)
            {
                return Err(violation(path, format!("above the maximum {max}")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// `anyOf`: the value must satisfy at least one branch. When none does, the refusal is the one
/// of the first branch whose `type` the value has (so a 40-character decimal string is "longer
/// than 32 characters", as a one-type schema would say), else "expected" every branch's type.
fn validate_any_of(
    branches: &Value,
    value: &Value,
    path: &mut String,
) -> Result<(), SchemaViolation> {
    let Some(branches) = branches.as_array().filter(|branches| !branches.is_empty()) else {
        return Err(violation(path, "bad `anyOf` in schema"));
    };
    let mut first_of_its_type = None;
    let mut types = Vec::new();
    for branch in branches {
        let saved = path.len();
        let outcome = validate(branch, value, path);
        path.truncate(saved);
        let Err(refusal) = outcome else {
            return Ok(());
        };
        let branch_type = branch.get("type").and_then(Value::as_str);
        match branch_type {
            Some(kind) if type_matches(kind, value) => {
                first_of_its_type.get_or_insert(refusal);
            }
            Some(kind) => types.push(kind),
            None => {
                first_of_its_type.get_or_insert(refusal);
            }
        }
    }
    Err(first_of_its_type
        .unwrap_or_else(|| violation(path, format!("expected {}", types.join(" or ")))))
}

fn validate_object(
    schema: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &mut String,
) -> Result<(), SchemaViolation> {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // Closed schemas only: an object schema that allows unknown fields is a catalog bug.
    if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
        return Err(violation(
            path,
            "object schema must set additionalProperties: false",
        ));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                return Err(violation(
                    path,
                    format!(
                        "missing required field `{}`",
                        crate::sanitize::echo_safe_segment(name)
                    ),
                ));
            }
        }
    }
    for (key, item) in map {
        let saved = path.len();
        path.push('/');
        path.push_str(&crate::sanitize::echo_safe_segment(key));
        match properties.get(key) {
            Some(child) => validate(child, item, path)?,
            None => return Err(violation(path, "unknown field")),
        }
        path.truncate(saved);
    }
    Ok(())
}

fn validate_array(
    schema: &Map<String, Value>,
    items: &[Value],
    path: &mut String,
) -> Result<(), SchemaViolation> {
    let count = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && count < min
    {
        return Err(violation(path, format!("fewer than {min} items")));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && count > max
    {
        return Err(violation(path, format!("more than {max} items")));
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            let saved = path.len();
            path.push('/');
            path.push_str(&index.to_string());
            validate(item_schema, item, path)?;
            path.truncate(saved);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::catalog::CATALOG;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "symbol": {"type": "string", "minLength": 1, "maxLength": 12},
                "side": {"type": "string", "enum": ["BUY", "SELL"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "symbols": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
            },
            "required": ["symbol"],
            "additionalProperties": false
        })
    }

    fn check(value: Value) -> Result<(), SchemaViolation> {
        validate(&schema(), &value, &mut String::new())
    }

    #[test]
    fn accepts_valid_arguments() {
        check(json!({"symbol": "AAPL", "side": "BUY", "limit": 5, "symbols": ["A", "B"]})).unwrap();
    }

    #[test]
    fn refuses_each_violation_with_its_path() {
        let cases = [
            (
                json!({"symbol": "AAPL", "extra": 1}),
                "/extra",
                "unknown field",
            ),
            (json!({}), "", "missing required field `symbol`"),
            (json!({"symbol": 5}), "/symbol", "expected string"),
            (
                json!({"symbol": ""}),
                "/symbol",
                "shorter than 1 characters",
            ),
            (
                json!({"symbol": "A", "side": "HOLD"}),
                "/side",
                "value is not one of the allowed values",
            ),
            (
                json!({"symbol": "A", "limit": 0}),
                "/limit",
                "below the minimum 1",
            ),
            (
                json!({"symbol": "A", "limit": 1.5}),
                "/limit",
                "expected integer",
            ),
            (
                json!({"symbol": "A", "symbols": ["a", "b", "c", "d"]}),
                "/symbols",
                "more than 3 items",
            ),
            (
                json!({"symbol": "A", "symbols": [1]}),
                "/symbols/0",
                "expected string",
            ),
            (json!([]), "", "expected object"),
        ];
        for (value, path, rule) in cases {
            let error = check(value.clone()).unwrap_err();
            assert_eq!(
                (error.path.as_str(), error.rule.as_str()),
                (path, rule),
                "{value}"
            );
        }
    }

    #[test]
    fn open_or_unknown_schemas_are_refused() {
        let open = json!({"type": "object", "properties": {}});
        assert!(validate(&open, &json!({}), &mut String::new()).is_err());
        let regex = json!({"type": "string", "pattern": "^A"});
        assert!(validate(&regex, &json!("A"), &mut String::new()).is_err());
    }

    #[test]
    fn decimal_arguments_take_a_string_or_a_number_as_before() {
        let buy = protocol::catalog::find("ibkr_buy").unwrap();
        let with = |value: Value| json!({"symbol": "AAPL", "cash_amount": value});
        for accepted in [
            json!("12.50"),
            json!(12.5),
            json!(12),
            json!(-3),
            json!("x".repeat(32)),
        ] {
            validate_arguments(buy, &with(accepted.clone()))
                .unwrap_or_else(|error| panic!("{accepted}: {error}"));
        }
        for (refused, rule) in [
            (json!("1".repeat(33)), "longer than 32 characters"),
            (json!(true), "expected string or number"),
            (Value::Null, "expected string or number"),
            (json!(["12.50"]), "expected string or number"),
            (json!({"amount": "12.50"}), "expected string or number"),
        ] {
            let error = validate_arguments(buy, &with(refused.clone())).unwrap_err();
            assert_eq!(
                (error.path.as_str(), error.rule.as_str()),
                ("/cash_amount", rule),
                "{refused}"
            );
        }
        // A malformed `anyOf` is a schema error, never a pass.
        for bad in [json!({"anyOf": []}), json!({"anyOf": {"type": "string"}})] {
            assert!(validate(&bad, &json!("a"), &mut String::new()).is_err());
        }
    }

    #[test]
    fn every_catalog_schema_accepts_empty_or_refuses_cleanly() {
        for tool in CATALOG {
            // Must not be a schema error: either valid, or a missing required field.
            match validate_arguments(tool, &json!({})) {
                Ok(()) => {}
                Err(error) => assert!(
                    error.rule.starts_with("missing required field"),
                    "{}: {error}",
                    tool.name
                ),
            }
            // An unknown field is never accepted, whatever else the schema asks for.
            assert!(
                validate_arguments(tool, &json!({"surprise": true})).is_err(),
                "{}",
                tool.name
            );
        }
    }
}
