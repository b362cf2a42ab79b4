//! The audience filter DSL: one JSON language for user segments.
//!
//! This module owns the whole life of a filter: parsing and validating the
//! JSON form ([`Filter::parse`]), rendering it back to canonical JSON
//! ([`Filter::to_json`]), evaluating it in memory against a user's attribute
//! map ([`Filter::matches`]) and compiling it to a parameterised SQL boolean
//! expression for SQLite or MySQL/MariaDB ([`Filter::to_sql`]). Both
//! evaluation paths implement exactly the same semantics.
//!
//! # Grammar
//!
//! A node is a JSON object with exactly one of these shapes:
//!
//! * `{"all": [node, ...]}`: AND; an empty list matches everyone.
//! * `{"any": [node, ...]}`: OR; an empty list matches nobody.
//! * `{"not": node}`
//! * `{"attr": "<name>", "<op>": <scalar>}` with `<op>` one of `eq`, `ne`,
//!   `lt`, `lte`, `gt`, `gte` (the ordering operators take a string or a
//!   number, `eq`/`ne` also a boolean).
//! * `{"attr": "<name>", "in": [<scalar>, ...]}` (1 to 1000 scalars).
//! * `{"attr": "<name>", "exists": true | false}`.
//!
//! Attribute names match `^[A-Za-z_][A-Za-z0-9_]{0,63}$` and address
//! top-level keys of the attribute object.
//!
//! A string operand `now`, `now-<N><unit>` or `now+<N><unit>` (unit one of
//! `s m h d w`) is a relative time: it is resolved against the evaluation
//! time to `%Y-%m-%dT%H:%M:%SZ` (UTC, second precision) and then compared as
//! a string, which orders such timestamps chronologically.
//!
//! # Semantics
//!
//! * `eq`: the attribute is present, has the same JSON type as the operand
//!   (string, number or boolean; integers and floats are both numbers and
//!   compare as `f64`) and is equal. Strings compare byte-wise.
//! * `ne`: exactly `not eq`, so users without the attribute match.
//! * `lt`, `lte`, `gt`, `gte`: the attribute is present with the operand's
//!   type (string or number) and the comparison holds; strings compare
//!   byte-wise (Rust `str` ordering).
//! * `in`: `eq` to any of the values.
//! * `exists: true`: the key is present with a non-null value;
//!   `exists: false` is the negation.
//!
//! Every predicate is two-valued, in memory and in SQL alike.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Number, Value};

/// Maximum nesting depth of a filter (the root node is at depth 1).
pub const MAX_DEPTH: usize = 16;
/// Maximum number of nodes (logical and predicate nodes) in a filter.
pub const MAX_NODES: usize = 256;
/// Maximum number of values in a single `in` list.
pub const MAX_IN_VALUES: usize = 1000;
/// Maximum number of operand values in a whole filter.
///
/// Every operand becomes a SQL parameter, so this bounds the parameter count
/// of [`Filter::to_sql`] well below the limits of SQLite (32766) and MySQL
/// (65535).
pub const MAX_TOTAL_VALUES: usize = 10_000;
/// Maximum length of an attribute name, in bytes.
pub const MAX_ATTR_NAME_LEN: usize = 64;
/// Largest offset a relative time (`now-<N><unit>`) may have, in seconds
/// (100 years of 365.25 days).
pub const MAX_RELATIVE_SECONDS: u64 = 36_525 * 86_400;

const OPERATORS: &str = "eq, ne, lt, lte, gt, gte, in, exists";
const ATTR_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// A validated audience filter.
///
/// Build one with [`Filter::parse`] (or serde deserialisation, which goes
/// through `parse`), or [`Filter::match_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

/// Error returned when a filter is malformed.
///
/// The message starts with the location of the offending node, e.g.
/// `filter.all[1]: unknown operator `like`; expected one of eq, ne, lt, lte,
/// gt, gte, in, exists`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// Human-readable description, prefixed with the location in the filter.
    pub message: String,
}

impl FilterError {
    fn at(path: &str, message: impl fmt::Display) -> Self {
        Self {
            message: format!("{path}: {message}"),
        }
    }
}

/// SQL dialect targeted by [`Filter::to_sql`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// SQLite with the JSON1 functions (`json_type`, `json_extract`).
    Sqlite,
    /// MySQL 8 and MariaDB 10.11 (`JSON_TYPE`, `JSON_EXTRACT`,
    /// `JSON_UNQUOTE`).
    Mysql,
}

/// A SQL boolean expression with positional `?` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFragment {
    /// The expression; safe to embed in a `WHERE` clause.
    pub sql: String,
    /// Values for the `?` placeholders, in order.
    pub params: Vec<SqlParam>,
}

/// A value bound to a placeholder of a [`SqlFragment`].
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// Bind as a text string.
    Text(String),
    /// Bind as a 64-bit integer.
    ///
    /// [`Filter::to_sql`] itself binds every number as [`SqlParam::Float`]:
    /// the DSL compares numbers as `f64`, and an integer parameter would make
    /// SQLite compare integers exactly instead.
    Int(i64),
    /// Bind as a double.
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Compare {
        attr: String,
        op: CompareOp,
        operand: Operand,
    },
    In {
        attr: String,
        operands: Vec<Operand>,
    },
    Exists {
        attr: String,
        exists: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CompareOp {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::Gt => "gt",
            Self::Gte => "gte",
        }
    }

    /// SQL operator for the ordering comparisons.
    fn sql(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "<>",
            Self::Lt => "<",
            Self::Lte => "<=",
            Self::Gt => ">",
            Self::Gte => ">=",
        }
    }

    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Self::Eq => ordering == Equal,
            Self::Ne => ordering != Equal,
            Self::Lt => ordering == Less,
            Self::Lte => ordering != Greater,
            Self::Gt => ordering == Greater,
            Self::Gte => ordering != Less,
        }
    }
}

/// An operand as written in the filter.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Str(String),
    /// A relative time such as `now-30d`; `raw` is the original text.
    RelativeTime {
        raw: String,
        offset_seconds: i64,
    },
    Num(Number),
    Bool(bool),
}

/// An operand with relative times resolved against an evaluation time.
#[derive(Debug, Clone, PartialEq)]
enum Resolved<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(f64),
    Bool(bool),
}

impl Operand {
    fn to_json(&self) -> Value {
        match self {
            Self::Str(s) | Self::RelativeTime { raw: s, .. } => Value::String(s.clone()),
            Self::Num(n) => Value::Number(n.clone()),
            Self::Bool(b) => Value::Bool(*b),
        }
    }

    fn resolve(&self, now: DateTime<Utc>) -> Resolved<'_> {
        match self {
            Self::Str(s) => Resolved::Str(s.as_str().into()),
            Self::RelativeTime { offset_seconds, .. } => {
                Resolved::Str(resolve_relative(now, *offset_seconds).into())
            }
            Self::Num(n) => Resolved::Num(number_as_f64(n)),
            Self::Bool(b) => Resolved::Bool(*b),
        }
    }
}

/// Converts a parsed number to `f64`; parsing guarantees it is finite.
fn number_as_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

fn resolve_relative(now: DateTime<Utc>, offset_seconds: i64) -> String {
    let at = TimeDelta::try_seconds(offset_seconds)
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(if offset_seconds < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        });
    at.format(TIME_FORMAT).to_string()
}

/// Recognises `now`, `now-<N><unit>` and `now+<N><unit>`.
///
/// Returns `Ok(None)` for any other string (a plain literal) and an error
/// for a relative time whose offset is out of range.
fn parse_relative_time(s: &str) -> Result<Option<i64>, String> {
    if s == "now" {
        return Ok(Some(0));
    }
    let (sign, rest) = if let Some(rest) = s.strip_prefix("now-") {
        (-1, rest)
    } else if let Some(rest) = s.strip_prefix("now+") {
        (1, rest)
    } else {
        return Ok(None);
    };
    let Some(unit) = rest.chars().last() else {
        return Ok(None);
    };
    let digits = &rest[..rest.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let unit_seconds: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Ok(None),
    };
    let out_of_range =
        || format!("relative time `{s}` is out of range; offsets may be at most 100 years");
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_seconds))
        .filter(|&secs| secs <= MAX_RELATIVE_SECONDS)
        .ok_or_else(out_of_range)?;
    let seconds = i64::try_from(seconds).map_err(|_| out_of_range())?;
    Ok(Some(sign * seconds))
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_valid_attr_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphabetic() || *first == b'_' => {}
        _ => return false,
    }
    bytes.len() <= MAX_ATTR_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn is_operator(key: &str) -> bool {
    CompareOp::from_name(key).is_some() || key == "in" || key == "exists"
}

fn backticked<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    keys.map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which scalar types an operator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepts {
    /// Strings, numbers and booleans (`eq`, `ne`, `in`).
    Scalar,
    /// Strings and numbers (`lt`, `lte`, `gt`, `gte`).
    Ordered,
}

/// Recursive-descent parser tracking the global size limits.
#[derive(Debug, Default)]
struct Parser {
    nodes: usize,
    values: usize,
}

impl Parser {
    fn node(&mut self, value: &Value, path: &str, depth: usize) -> Result<Node, FilterError> {
        if depth > MAX_DEPTH {
            return Err(FilterError::at(
                path,
                format!("filter is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(FilterError::at(
                path,
                format!("filter has more than {MAX_NODES} nodes"),
            ));
        }
        let Value::Object(object) = value else {
            return Err(FilterError::at(
                path,
                format!("expected a JSON object, got {}", json_type_name(value)),
            ));
        };
        for logical in ["all", "any", "not"] {
            let Some(child) = object.get(logical) else {
                continue;
            };
            if object.len() > 1 {
                let others = backticked(object.keys().filter(|k| *k != logical));
                return Err(FilterError::at(
                    path,
                    format!("`{logical}` must be the only key in its node, found also {others}"),
                ));
            }
            return match logical {
                "not" => Ok(Node::Not(Box::new(self.node(
                    child,
                    &format!("{path}.not"),
                    depth + 1,
                )?))),
                _ => {
                    let children = self.list(child, logical, path, depth)?;
                    Ok(if logical == "all" {
                        Node::All(children)
                    } else {
                        Node::Any(children)
                    })
                }
            };
        }
        if let Some(attr) = object.get("attr") {
            return self.predicate(object, attr, path);
        }
        match object.keys().next() {
            None => Err(FilterError::at(
                path,
                "empty object; expected `all`, `any`, `not` or an `attr` predicate",
            )),
            Some(key) if is_operator(key) => Err(FilterError::at(
                path,
                format!("operator `{key}` needs an `attr` key naming the attribute"),
            )),
            Some(key) => Err(FilterError::at(
                path,
                format!("unknown key `{key}`; expected `all`, `any`, `not` or `attr`"),
            )),
        }
    }

    fn list(
        &mut self,
        value: &Value,
        logical: &str,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Node>, FilterError> {
        let Value::Array(items) = value else {
            return Err(FilterError::at(
                path,
                format!(
                    "`{logical}` expects an array of nodes, got {}",
                    json_type_name(value)
                ),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.node(item, &format!("{path}.{logical}[{i}]"), depth + 1))
            .collect()
    }

    fn predicate(
        &mut self,
        object: &Map<String, Value>,
        attr: &Value,
        path: &str,
    ) -> Result<Node, FilterError> {
        let Value::String(attr) = attr else {
            return Err(FilterError::at(
                path,
                format!("`attr` must be a string, got {}", json_type_name(attr)),
            ));
        };
        if !is_valid_attr_name(attr) {
            return Err(FilterError::at(
                path,
                format!("invalid attribute name `{attr}`; names must match {ATTR_NAME_PATTERN}"),
            ));
        }
        let ops: Vec<(&String, &Value)> = object.iter().filter(|(k, _)| *k != "attr").collect();
        if let Some((unknown, _)) = ops.iter().find(|(k, _)| !is_operator(k)) {
            return Err(FilterError::at(
                path,
                format!("unknown operator `{unknown}`; expected one of {OPERATORS}"),
            ));
        }
        let (op, operand) = match ops.as_slice() {
            [] => {
                return Err(FilterError::at(
                    path,
                    format!("missing operator for attribute `{attr}`; expected one of {OPERATORS}"),
                ))
            }
            [single] => *single,
            several => {
                let listed = backticked(several.iter().map(|(k, _)| *k));
                let message = format!(
                    "several operators in one node ({listed}); combine predicates with `all` or `any`"
                );
                return Err(FilterError::at(path, message));
            }
        };
        let attr = attr.clone();
        match op.as_str() {
            "in" => {
                let operands = self.in_list(operand, path)?;
                Ok(Node::In { attr, operands })
            }
            "exists" => match operand {
                Value::Bool(exists) => Ok(Node::Exists {
                    attr,
                    exists: *exists,
                }),
                other => Err(FilterError::at(
                    path,
                    format!(
                        "operator `exists` expects true or false, got {}",
                        json_type_name(other)
                    ),
                )),
            },
            name => {
                let Some(op) = CompareOp::from_name(name) else {
                    return Err(FilterError::at(
                        path,
                        format!("unknown operator `{name}`; expected one of {OPERATORS}"),
                    ));
                };
                let accepts = if matches!(op, CompareOp::Eq | CompareOp::Ne) {
                    Accepts::Scalar
                } else {
                    Accepts::Ordered
                };
                let operand = self.operand(operand, accepts, name, path)?;
                Ok(Node::Compare { attr, op, operand })
            }
        }
    }

    fn in_list(&mut self, value: &Value, path: &str) -> Result<Vec<Operand>, FilterError> {
        let Value::Array(items) = value else {
            return Err(FilterError::at(
                path,
                format!(
                    "operator `in` expects an array of strings, numbers or booleans, got {}",
                    json_type_name(value)
                ),
            ));
        };
        if items.is_empty() {
            return Err(FilterError::at(
                path,
                "operator `in` needs at least one value",
            ));
        }
        if items.len() > MAX_IN_VALUES {
            return Err(FilterError::at(
                path,
                format!(
                    "operator `in` accepts at most {MAX_IN_VALUES} values, got {}",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.operand(item, Accepts::Scalar, "in", &format!("{path}.in[{i}]")))
            .collect()
    }

    fn operand(
        &mut self,
        value: &Value,
        accepts: Accepts,
        op: &str,
        path: &str,
    ) -> Result<Operand, FilterError> {
        self.values += 1;
        if self.values > MAX_TOTAL_VALUES {
            return Err(FilterError::at(
                path,
                format!("filter has more than {MAX_TOTAL_VALUES} operand values in total"),
            ));
        }
        let expected = match accepts {
            Accepts::Scalar => "a string, number or boolean",
            Accepts::Ordered => "a string or number",
        };
        match value {
            Value::String(s) => match parse_relative_time(s) {
                Ok(Some(offset_seconds)) => Ok(Operand::RelativeTime {
                    raw: s.clone(),
                    offset_seconds,
                }),
                Ok(None) => Ok(Operand::Str(s.clone())),
                Err(message) => Err(FilterError::at(path, message)),
            },
            Value::Number(n) => {
                if n.as_f64().is_some_and(f64::is_finite) {
                    Ok(Operand::Num(n.clone()))
                } else {
                    Err(FilterError::at(
                        path,
                        format!("number `{n}` is out of range"),
                    ))
                }
            }
            Value::Bool(b) if accepts == Accepts::Scalar => Ok(Operand::Bool(*b)),
            other => Err(FilterError::at(
                path,
                format!(
                    "operator `{op}` expects {expected}, got {}",
                    json_type_name(other)
                ),
            )),
        }
    }
}

impl Filter {
    /// Parses and validates a filter from its JSON form.
    ///
    /// # Errors
    ///
    /// Returns a [`FilterError`] naming the offending location for any
    /// deviation from the grammar or the size limits.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        let root = Parser::default().node(value, "filter", 1)?;
        Ok(Filter { root })
    }

    /// The filter that matches every user: `{"all": []}`.
    pub fn match_all() -> Filter {
        Filter {
            root: Node::All(Vec::new()),
        }
    }

    /// Whether this filter is literally `{"all": []}`.
    pub fn is_match_all(&self) -> bool {
        matches!(&self.root, Node::All(children) if children.is_empty())
    }

    /// Canonical JSON form, accepted again by [`Filter::parse`].
    ///
    /// Relative times are kept as written (`now-30d`), not resolved.
    pub fn to_json(&self) -> Value {
        node_to_json(&self.root)
    }

    /// Evaluates the filter in memory against a user's attributes, with
    /// relative times resolved against `now`.
    pub fn matches(&self, attributes: &Map<String, Value>, now: DateTime<Utc>) -> bool {
        eval(&self.root, attributes, now)
    }

    /// Why a user's attributes do not match, naming the first clause that fails and the
    /// attribute's value (`filter.all[1]: {"attr":"tier","eq":"gold"} does not hold (tier is
    /// "free")`); `None` when they match.
    pub fn why_not(&self, attributes: &Map<String, Value>, now: DateTime<Utc>) -> Option<String> {
        why_not(&self.root, attributes, now, "filter")
    }

    /// Compiles the filter to a parameterised SQL boolean expression over
    /// `column`, a JSON text column holding the attributes object.
    ///
    /// `column` is a trusted identifier supplied by our own code; all user
    /// input (operands) is bound as parameters, and attribute names (checked
    /// against `^[A-Za-z_][A-Za-z0-9_]{0,63}$` by [`Filter::parse`]) are
    /// written as JSON-path literals, so that an index on an attribute's typed
    /// value ([`sqlite_typed_value`]) matches the expression. The expression
    /// selects exactly the users [`Filter::matches`] accepts at the same
    /// `now`. On MySQL it never evaluates to `NULL`; on SQLite a comparison of
    /// a missing or differently typed attribute is `NULL` (so that it stays a
    /// plain comparison of the indexed value), which `WHERE` treats as false
    /// and `not` turns into true, as for `false`.
    pub fn to_sql(&self, dialect: SqlDialect, column: &str, now: DateTime<Utc>) -> SqlFragment {
        self.write_sql(dialect, column, now, None)
    }

    /// [`Filter::to_sql`] telling SQLite's planner that the filter is selective: each
    /// comparison of the top-level conjunction that an attribute index can serve
    /// ([`Filter::indexable`]) is wrapped in `likelihood(…, 0.0001)`, so the planner reads
    /// the index (and sorts what it finds) rather than walking the primary key in order.
    /// Only worth it when few users match; same rows, same semantics. MySQL: as `to_sql`.
    pub fn to_sql_selective(
        &self,
        dialect: SqlDialect,
        column: &str,
        now: DateTime<Utc>,
    ) -> SqlFragment {
        self.write_sql(dialect, column, now, Some(0.0001))
    }

    fn write_sql(
        &self,
        dialect: SqlDialect,
        column: &str,
        now: DateTime<Utc>,
        likelihood: Option<f64>,
    ) -> SqlFragment {
        let mut writer = SqlWriter {
            dialect,
            column,
            now,
            likelihood,
            sql: String::new(),
            params: Vec::new(),
        };
        writer.node(&self.root, true);
        SqlFragment {
            sql: writer.sql,
            params: writer.params,
        }
    }

    /// The attribute values an index can serve for this filter: the comparisons (`eq`,
    /// `lt`, `lte`, `gt`, `gte`, and `in` over values of one type) of its top-level
    /// conjunction, each as its attribute and the type it compares, without repeats. A user
    /// matches only if each of them holds, so an index on any one narrows the search.
    pub fn indexable(&self) -> Vec<AttrIndex> {
        let mut out = Vec::new();
        collect_indexable(&self.root, &mut out);
        out
    }

    /// The attributes the filter reads: all [`Filter::matches`] looks at, so that a store
    /// evaluating it in memory decodes those alone.
    pub fn attributes(&self) -> std::collections::BTreeSet<String> {
        fn collect(node: &Node, out: &mut std::collections::BTreeSet<String>) {
            match node {
                Node::All(children) | Node::Any(children) => {
                    children.iter().for_each(|c| collect(c, out))
                }
                Node::Not(child) => collect(child, out),
                Node::Compare { attr, .. } | Node::In { attr, .. } | Node::Exists { attr, .. } => {
                    out.insert(attr.clone());
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        collect(&self.root, &mut out);
        out
    }
}

/// The JSON type an attribute is compared as, in SQL and in attribute indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttrType {
    Text,
    Number,
    Bool,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Number => "number",
            Self::Bool => "bool",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "number" => Self::Number,
            "bool" => Self::Bool,
            _ => return None,
        })
    }
}

/// An attribute compared as one type: what an attribute index is built on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrIndex {
    /// A valid attribute name (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`).
    pub attr: String,
    pub kind: AttrType,
}

impl AttrIndex {
    /// `kind` and `attr` as one SQL-identifier-safe word (`number_n`), for index names.
    pub fn slug(&self) -> String {
        format!("{}_{}", self.kind.as_str(), self.attr)
    }

    /// Parses a [`AttrIndex::slug`] back; `None` for anything else.
    pub fn from_slug(slug: &str) -> Option<Self> {
        let (kind, attr) = slug.split_once('_')?;
        let kind = AttrType::parse(kind)?;
        is_valid_attr_name(attr).then(|| Self {
            attr: attr.to_owned(),
            kind,
        })
    }
}

/// SQLite's typed value of attribute `attr` of the JSON `column`: the value when it has type
/// `kind` (numbers as REAL, booleans as `'true'`/`'false'`), else `NULL`. [`Filter::to_sql`]
/// compares exactly this expression, so `CREATE INDEX … ON users(<this>)` serves those
/// comparisons. `attr` must be a valid attribute name (it is written into the SQL).
pub fn sqlite_typed_value(column: &str, attr: &str, kind: AttrType) -> String {
    debug_assert!(is_valid_attr_name(attr));
    let path = format!("'$.\"{attr}\"'");
    let ty = format!("json_type({column}, {path})");
    match kind {
        AttrType::Text => {
            format!("(CASE WHEN {ty} = 'text' THEN json_extract({column}, {path}) END)")
        }
        AttrType::Number => format!(
            "(CASE WHEN {ty} IN ('integer', 'real') \
             THEN CAST(json_extract({column}, {path}) AS REAL) END)"
        ),
        AttrType::Bool => format!("(CASE WHEN {ty} IN ('true', 'false') THEN {ty} END)"),
    }
}

fn collect_indexable(node: &Node, out: &mut Vec<AttrIndex>) {
    let mut add = |attr: &str, kind: Kind| {
        let index = AttrIndex {
            attr: attr.to_owned(),
            kind: kind.attr_type(),
        };
        if !out.contains(&index) {
            out.push(index);
        }
    };
    match node {
        Node::All(children) => children.iter().for_each(|c| collect_indexable(c, out)),
        Node::Compare { attr, op, operand } if *op != CompareOp::Ne => {
            // The kind does not depend on `now` (relative times are strings).
            add(attr, kind_of(&operand.resolve(DateTime::<Utc>::MIN_UTC)));
        }
        Node::In { attr, operands } => {
            let now = DateTime::<Utc>::MIN_UTC;
            let mut kinds = operands.iter().map(|o| kind_of(&o.resolve(now)));
            if let Some(first) = kinds.next() {
                if kinds.all(|k| k == first) {
                    add(attr, first);
                }
            }
        }
        _ => {}
    }
}

impl Default for Filter {
    /// The match-all filter.
    fn default() -> Self {
        Self::match_all()
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::parse(&value).map_err(|e| {
            // The deserializer's caller already names the field holding the filter, so the
            // message drops its own `filter` root: `all[1]: unknown operator ...`.
            let msg = e.message.strip_prefix("filter").unwrap_or(&e.message);
            let msg = msg
                .strip_prefix(": ")
                .or_else(|| msg.strip_prefix('.'))
                .unwrap_or(msg);
            serde::de::Error::custom(msg)
        })
    }
}

fn node_to_json(node: &Node) -> Value {
    let mut object = Map::new();
    match node {
        Node::All(children) => {
            object.insert(
                "all".to_owned(),
                Value::Array(children.iter().map(node_to_json).collect()),
            );
        }
        Node::Any(children) => {
            object.insert(
                "any".to_owned(),
                Value::Array(children.iter().map(node_to_json).collect()),
            );
        }
        Node::Not(child) => {
            object.insert("not".to_owned(), node_to_json(child));
        }
        Node::Compare { attr, op, operand } => {
            object.insert("attr".to_owned(), Value::String(attr.clone()));
            object.insert(op.name().to_owned(), operand.to_json());
        }
        Node::In { attr, operands } => {
            object.insert("attr".to_owned(), Value::String(attr.clone()));
            object.insert(
                "in".to_owned(),
                Value::Array(operands.iter().map(Operand::to_json).collect()),
            );
        }
        Node::Exists { attr, exists } => {
            object.insert("attr".to_owned(), Value::String(attr.clone()));
            object.insert("exists".to_owned(), Value::Bool(*exists));
        }
    }
    Value::Object(object)
}

fn eval(node: &Node, attributes: &Map<String, Value>, now: DateTime<Utc>) -> bool {
    match node {
        Node::All(children) => children.iter().all(|c| eval(c, attributes, now)),
        Node::Any(children) => children.iter().any(|c| eval(c, attributes, now)),
        Node::Not(child) => !eval(child, attributes, now),
        Node::Compare { attr, op, operand } => {
            let value = attributes.get(attr);
            let operand = operand.resolve(now);
            match op {
                CompareOp::Eq => equals(value, &operand),
                CompareOp::Ne => !equals(value, &operand),
                _ => compare(value, &operand).is_some_and(|ordering| op.holds(ordering)),
            }
        }
        Node::In { attr, operands } => {
            let value = attributes.get(attr);
            operands.iter().any(|o| equals(value, &o.resolve(now)))
        }
        Node::Exists { attr, exists } => {
            attributes.get(attr).is_some_and(|v| !v.is_null()) == *exists
        }
    }
}

fn why_not(
    node: &Node,
    attributes: &Map<String, Value>,
    now: DateTime<Utc>,
    path: &str,
) -> Option<String> {
    if eval(node, attributes, now) {
        return None;
    }
    let clause = node_to_json(node);
    Some(match node {
        Node::All(children) => {
            return children
                .iter()
                .enumerate()
                .find_map(|(i, c)| why_not(c, attributes, now, &format!("{path}.all[{i}]")))
        }
        Node::Any(_) => format!("{path}: none of {clause} holds"),
        Node::Not(_) => format!("{path}: {clause} does not hold (its inner clause does)"),
        Node::Compare { attr, .. } | Node::In { attr, .. } | Node::Exists { attr, .. } => {
            let value = match attributes.get(attr) {
                Some(v) => format!("{attr} is {v}"),
                None => format!("{attr} is not set"),
            };
            format!("{path}: {clause} does not hold ({value})")
        }
    })
}

/// `eq`: present, same JSON type, equal.
fn equals(value: Option<&Value>, operand: &Resolved<'_>) -> bool {
    match (value, operand) {
        (Some(Value::Bool(a)), Resolved::Bool(b)) => a == b,
        _ => compare(value, operand) == Some(std::cmp::Ordering::Equal),
    }
}

/// Orders a string or number attribute against an operand of the same type;
/// `None` when the attribute is missing or of another type.
fn compare(value: Option<&Value>, operand: &Resolved<'_>) -> Option<std::cmp::Ordering> {
    match (value?, operand) {
        (Value::String(a), Resolved::Str(b)) => Some(a.as_str().cmp(b.as_ref())),
        (Value::Number(a), Resolved::Num(b)) => a.as_f64()?.partial_cmp(b),
        _ => None,
    }
}

/// The JSON type family an operand (and a matching attribute) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Bool,
}

impl Kind {
    fn attr_type(self) -> AttrType {
        match self {
            Kind::Text => AttrType::Text,
            Kind::Number => AttrType::Number,
            Kind::Bool => AttrType::Bool,
        }
    }
}

/// Accumulates SQL text and parameters.
struct SqlWriter<'a> {
    dialect: SqlDialect,
    column: &'a str,
    now: DateTime<Utc>,
    /// SQLite: wrap the comparisons of the top-level conjunction in `likelihood(…, p)`.
    likelihood: Option<f64>,
    sql: String,
    params: Vec<SqlParam>,
}

impl SqlWriter<'_> {
    /// Writes `node`; `top` while it is part of the top-level conjunction.
    fn node(&mut self, node: &Node, top: bool) {
        match node {
            Node::All(children) => self.junction(children, "AND", "(1 = 1)", top),
            Node::Any(children) => self.junction(children, "OR", "(1 = 0)", false),
            Node::Not(child) => self.not(|w| w.node(child, false)),
            Node::Compare { attr, op, operand } => {
                let operand = operand.resolve(self.now);
                match op {
                    CompareOp::Eq => {
                        self.hinted(top, |w| w.equals_any(attr, std::slice::from_ref(&operand)))
                    }
                    CompareOp::Ne => {
                        self.not(|w| w.equals_any(attr, std::slice::from_ref(&operand)))
                    }
                    _ => self.hinted(top, |w| w.ordered(attr, *op, &operand)),
                }
            }
            Node::In { attr, operands } => {
                let now = self.now;
                let resolved: Vec<Resolved<'_>> = operands.iter().map(|o| o.resolve(now)).collect();
                self.hinted(top, |w| w.equals_any(attr, &resolved));
            }
            Node::Exists { attr, exists } => {
                let null = match self.dialect {
                    SqlDialect::Sqlite => "'null'",
                    SqlDialect::Mysql => "'NULL'",
                };
                self.sql.push_str("(COALESCE(");
                self.json_type(attr);
                self.sql.push_str(", ");
                self.sql.push_str(null);
                self.sql.push_str(if *exists { ") <> " } else { ") = " });
                self.sql.push_str(null);
                self.sql.push(')');
            }
        }
    }

    /// `(NOT <inner>)`; on SQLite, where a comparison of a missing attribute is `NULL`,
    /// `(NOT COALESCE(<inner>, 0))`, so it is true there as `not` says.
    fn not(&mut self, inner: impl FnOnce(&mut Self)) {
        match self.dialect {
            SqlDialect::Sqlite => {
                self.sql.push_str("(NOT COALESCE(");
                inner(self);
                self.sql.push_str(", 0))");
            }
            SqlDialect::Mysql => {
                self.sql.push_str("(NOT ");
                inner(self);
                self.sql.push(')');
            }
        }
    }

    /// `inner`, wrapped in `likelihood(…, p)` for SQLite's planner when asked and `top`.
    fn hinted(&mut self, top: bool, inner: impl FnOnce(&mut Self)) {
        match self.likelihood {
            Some(p) if top && self.dialect == SqlDialect::Sqlite => {
                self.sql.push_str("likelihood(");
                inner(self);
                self.sql.push_str(&format!(", {p:?})"));
            }
            _ => inner(self),
        }
    }

    fn junction(&mut self, children: &[Node], joiner: &str, empty: &str, top: bool) {
        if children.is_empty() {
            self.sql.push_str(empty);
            return;
        }
        self.sql.push('(');
        for (i, child) in children.iter().enumerate() {
            if i > 0 {
                self.sql.push(' ');
                self.sql.push_str(joiner);
                self.sql.push(' ');
            }
            self.node(child, top);
        }
        self.sql.push(')');
    }

    /// `attr` equals (per `eq`) any of `operands`: one type-guarded `IN` per
    /// operand type, OR-ed together.
    fn equals_any(&mut self, attr: &str, operands: &[Resolved<'_>]) {
        let mut groups: Vec<(Kind, Vec<&Resolved<'_>>)> = Vec::new();
        for kind in [Kind::Text, Kind::Number, Kind::Bool] {
            let members: Vec<_> = operands.iter().filter(|o| kind_of(o) == kind).collect();
            if !members.is_empty() {
                groups.push((kind, members));
            }
        }
        if groups.len() != 1 {
            self.sql.push('(');
        }
        for (i, (kind, members)) in groups.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(" OR ");
            }
            self.typed_start(attr, *kind);
            self.sql.push_str(" IN (");
            for (j, operand) in members.iter().enumerate() {
                if j > 0 {
                    self.sql.push_str(", ");
                }
                self.operand(operand);
            }
            self.sql.push(')');
            self.typed_end();
        }
        if groups.is_empty() {
            // Unreachable for parsed filters (`in` has at least one value).
            self.sql.push_str("1 = 0");
        }
        if groups.len() != 1 {
            self.sql.push(')');
        }
    }

    /// `attr <op> operand` for the ordering operators (string or number).
    fn ordered(&mut self, attr: &str, op: CompareOp, operand: &Resolved<'_>) {
        let kind = kind_of(operand);
        if kind == Kind::Bool {
            // Unreachable for parsed filters: ordering operators reject booleans.
            self.sql.push_str("(1 = 0)");
            return;
        }
        self.typed_start(attr, kind);
        self.sql.push(' ');
        self.sql.push_str(op.sql());
        self.sql.push(' ');
        self.operand(operand);
        self.typed_end();
    }

    /// Opens a comparison of the attribute's value as `kind`; the caller appends the
    /// comparison, then [`Self::typed_end`].
    ///
    /// SQLite: `(<typed value>` ([`sqlite_typed_value`]: `NULL` for a missing key or another
    /// type, so the comparison is `NULL`, and an index on the same expression serves it).
    /// MySQL: `(CASE WHEN <attr has type kind> THEN <attr value as kind>`, closed by
    /// ` ELSE 0 END)`: missing keys and other types give 0 (never NULL), and values of
    /// another type are never cast.
    fn typed_start(&mut self, attr: &str, kind: Kind) {
        if self.dialect == SqlDialect::Sqlite {
            self.sql.push('(');
            self.sql
                .push_str(&sqlite_typed_value(self.column, attr, kind.attr_type()));
            return;
        }
        self.sql.push_str("(CASE WHEN ");
        self.json_type(attr);
        self.sql.push_str(match kind {
            Kind::Text => " = 'STRING'",
            Kind::Number => " IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')",
            Kind::Bool => " = 'BOOLEAN'",
        });
        self.sql.push_str(" THEN ");
        match kind {
            Kind::Text => {
                self.sql.push_str("CAST(JSON_UNQUOTE(");
                self.json_extract(attr);
                self.sql.push_str(") AS BINARY)");
            }
            Kind::Number => {
                self.sql.push_str("CAST(");
                self.json_extract(attr);
                self.sql.push_str(" AS DOUBLE)");
            }
            Kind::Bool => {
                self.sql.push_str("JSON_UNQUOTE(");
                self.json_extract(attr);
                self.sql.push(')');
            }
        }
    }

    fn typed_end(&mut self) {
        self.sql.push_str(match self.dialect {
            SqlDialect::Sqlite => ")",
            SqlDialect::Mysql => " ELSE 0 END)",
        });
    }

    /// Writes the operand as a placeholder (booleans as one of two fixed
    /// literals, matching the `json_type`/`JSON_UNQUOTE` spelling).
    fn operand(&mut self, operand: &Resolved<'_>) {
        match operand {
            Resolved::Str(s) => {
                self.sql.push_str(match self.dialect {
                    SqlDialect::Sqlite => "?",
                    SqlDialect::Mysql => "CAST(? AS BINARY)",
                });
                self.params.push(SqlParam::Text(s.clone().into_owned()));
            }
            Resolved::Num(n) => {
                self.sql.push('?');
                self.params.push(SqlParam::Float(*n));
            }
            Resolved::Bool(b) => self.sql.push_str(if *b { "'true'" } else { "'false'" }),
        }
    }

    /// The JSON type name of the attribute, NULL when the key is missing.
    fn json_type(&mut self, attr: &str) {
        match self.dialect {
            SqlDialect::Sqlite => {
                self.sql.push_str("json_type(");
                self.sql.push_str(self.column);
                self.sql.push_str(", ?)");
                self.push_path(attr);
            }
            SqlDialect::Mysql => {
                self.sql.push_str("JSON_TYPE(");
                self.json_extract(attr);
                self.sql.push(')');
            }
        }
    }

    fn json_extract(&mut self, attr: &str) {
        self.sql.push_str(match self.dialect {
            SqlDialect::Sqlite => "json_extract(",
            SqlDialect::Mysql => "JSON_EXTRACT(",
        });
        self.sql.push_str(self.column);
        self.sql.push_str(", ?)");
        self.push_path(attr);
    }

    /// Binds the JSON path of a (validated) top-level attribute.
    fn push_path(&mut self, attr: &str) {
        self.params.push(SqlParam::Text(format!("$.\"{attr}\"")));
    }
}

fn kind_of(operand: &Resolved<'_>) -> Kind {
    match operand {
        Resolved::Str(_) => Kind::Text,
        Resolved::Num(_) => Kind::Number,
        Resolved::Bool(_) => Kind::Bool,
    }
}

/// The OpenAPI schema of a filter: a JSON object of the grammar above (checked by
/// [`Filter::parse`], whose 422 names what is wrong), described rather than spelled out as a
/// recursive schema.
pub fn filter_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .description(Some(
            "An audience filter: `{\"all\": [f, ...]}`, `{\"any\": [f, ...]}`, `{\"not\": f}`, \
             `{\"attr\": NAME, OP: VALUE}` with OP one of eq, ne, lt, lte, gt, gte, \
             `{\"attr\": NAME, \"in\": [VALUE, ...]}` or `{\"attr\": NAME, \"exists\": BOOL}`; \
             a string VALUE `now-7d` is a time relative to the evaluation.",
        ))
        .examples([serde_json::json!({"all": [{"attr": "plan", "eq": "pro"},
                                               {"attr": "last_seen", "gte": "now-30d"}]})])
        .build()
}

#[cfg(test)]
mod why_not_tests {
    use super::*;

    #[test]
    fn the_first_failing_clause_is_named_with_the_attributes_value() {
        let f = Filter::parse(&serde_json::json!({"all": [
            {"attr": "country", "eq": "PT"},
            {"attr": "tier", "in": ["gold", "premium"]}
        ]}))
        .unwrap();
        let now = Utc::now();
        let attrs = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            f.why_not(
                &attrs(serde_json::json!({"country": "PT", "tier": "gold"})),
                now
            ),
            None
        );
        let why = f
            .why_not(
                &attrs(serde_json::json!({"country": "PT", "tier": "free"})),
                now,
            )
            .unwrap();
        assert!(why.starts_with("filter.all[1]: "), "{why}");
        assert!(why.ends_with(r#"(tier is "free")"#), "{why}");
        let why = f.why_not(&attrs(serde_json::json!({})), now).unwrap();
        assert!(
            why.contains("filter.all[0]") && why.contains("country is not set"),
            "{why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    fn indexable_of(v: Value) -> Vec<String> {
        Filter::parse(&v)
            .expect("valid filter")
            .indexable()
            .iter()
            .map(AttrIndex::slug)
            .collect()
    }

    #[test]
    fn the_comparisons_of_the_top_level_conjunction_are_what_an_index_can_serve() {
        assert_eq!(
            indexable_of(json!({"all": [
                {"attr": "tier", "eq": "gold"},
                {"attr": "n", "lt": 10},
                {"all": [{"attr": "vip", "eq": true}, {"attr": "n", "gte": 2}]},
                {"attr": "seen", "gte": "now-30d"},
                {"attr": "locale", "in": ["en", "fr"]},
                {"attr": "mixed", "in": ["1", 1]},
                {"attr": "other", "ne": "x"},
                {"not": {"attr": "negated", "eq": 1}},
                {"any": [{"attr": "either", "eq": 1}]},
                {"attr": "present", "exists": true},
            ]})),
            [
                "text_tier",
                "number_n",
                "bool_vip",
                "text_seen",
                "text_locale"
            ]
        );
        assert_eq!(indexable_of(json!({"attr": "n", "gt": 1.5})), ["number_n"]);
        assert!(indexable_of(json!({"any": [{"attr": "n", "eq": 1}]})).is_empty());
        assert!(indexable_of(json!({"all": []})).is_empty());
    }

    #[test]
    fn an_attribute_index_slug_reads_back_and_nothing_else_does() {
        for slug in ["text_tier", "number_n", "bool_has_app", "number__x"] {
            assert_eq!(AttrIndex::from_slug(slug).expect(slug).slug(), slug);
        }
        for bad in [
            "tier",
            "text_",
            "json_tier",
            "text_9x",
            "text_a-b",
            "number_a b",
        ] {
            assert!(AttrIndex::from_slug(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sqlite_compares_the_typed_value_an_index_is_built_on_and_hints_only_the_top_conjunction() {
        let f = Filter::parse(&json!({"all": [
            {"attr": "n", "lt": 3},
            {"not": {"attr": "tier", "eq": "x"}},
        ]}))
        .expect("valid filter");
        let typed = sqlite_typed_value("attributes", "n", AttrType::Number);
        let plain = f.to_sql(SqlDialect::Sqlite, "attributes", now());
        assert!(
            plain.sql.contains(&format!("({typed} < ?)")),
            "{}",
            plain.sql
        );
        assert!(!plain.sql.contains("likelihood"));
        let hinted = f.to_sql_selective(SqlDialect::Sqlite, "attributes", now());
        assert!(
            hinted
                .sql
                .contains(&format!("likelihood(({typed} < ?), 0.0001)")),
            "{}",
            hinted.sql
        );
        assert_eq!(
            hinted.sql.matches("likelihood").count(),
            1,
            "{}",
            hinted.sql
        );
        assert_eq!(hinted.params, plain.params);
        // MySQL is not hinted.
        assert_eq!(
            f.to_sql_selective(SqlDialect::Mysql, "attributes", now()),
            f.to_sql(SqlDialect::Mysql, "attributes", now())
        );
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 6, 15, 12, 30, 45)
            .single()
            .expect("valid date")
            + TimeDelta::milliseconds(789)
    }

    fn parse(value: Value) -> Filter {
        match Filter::parse(&value) {
            Ok(filter) => filter,
            Err(e) => panic!("{value} should parse: {e}"),
        }
    }

    fn parse_err(value: Value) -> String {
        match Filter::parse(&value) {
            Ok(filter) => panic!("{value} should be rejected, got {filter:?}"),
            Err(e) => e.message,
        }
    }

    fn attrs(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("attributes must be an object, got {other}"),
        }
    }

    fn matches(filter: Value, attributes: Value) -> bool {
        parse(filter).matches(&attrs(attributes), now())
    }

    fn nested_nots(levels: usize) -> Value {
        let mut node = json!({"attr": "a", "exists": true});
        for _ in 1..levels {
            node = json!({ "not": node });
        }
        node
    }

    #[test]
    fn every_node_shape_parses_and_round_trips_to_the_same_json() {
        let filter = json!({"all": [
            {"any": []},
            {"not": {"attr": "tier", "eq": "premium"}},
            {"attr": "score", "ne": 3},
            {"attr": "score", "lt": 2.5},
            {"attr": "name", "lte": "m"},
            {"attr": "age", "gt": -1},
            {"attr": "last_active_at", "gte": "now-30d"},
            {"attr": "active", "eq": true},
            {"attr": "locale", "in": ["en", 1, false, "now"]},
            {"attr": "_private9", "exists": false}
        ]});
        let parsed = parse(filter.clone());
        assert_eq!(parsed.to_json(), filter);
        assert_eq!(Filter::parse(&parsed.to_json()), Ok(parsed));
    }

    #[test]
    fn match_all_is_an_empty_all_and_matches_everyone() {
        let filter = Filter::match_all();
        assert!(filter.is_match_all());
        assert_eq!(filter.to_json(), json!({"all": []}));
        assert_eq!(parse(json!({"all": []})), filter);
        assert_eq!(Filter::default(), filter);
        assert!(filter.matches(&Map::new(), now()));
        assert!(!parse(json!({"any": []})).is_match_all());
        assert!(!parse(json!({"all": [{"all": []}]})).is_match_all());
    }

    #[test]
    fn empty_any_matches_nobody() {
        assert!(!matches(json!({"any": []}), json!({"tier": "premium"})));
        assert!(matches(json!({"not": {"any": []}}), json!({})));
    }

    #[test]
    fn unknown_operator_is_rejected_with_the_valid_ones_listed() {
        let message = parse_err(json!({"all": [
            {"attr": "tier", "eq": "premium"},
            {"attr": "tier", "like": "prem%"}
        ]}));
        assert_eq!(
            message,
            "filter.all[1]: unknown operator `like`; expected one of eq, ne, lt, lte, gt, gte, in, exists"
        );
    }

    #[test]
    fn several_operators_in_one_node_are_rejected() {
        let message = parse_err(json!({"attr": "score", "gt": 1, "lt": 5}));
        assert!(
            message.starts_with("filter: several operators in one node"),
            "{message}"
        );
        assert!(message.contains("`gt`, `lt`"), "{message}");
    }

    #[test]
    fn a_predicate_without_an_operator_is_rejected() {
        let message = parse_err(json!({"not": {"attr": "tier"}}));
        assert!(
            message.starts_with("filter.not: missing operator for attribute `tier`"),
            "{message}"
        );
        assert!(message.contains(OPERATORS), "{message}");
    }

    #[test]
    fn an_operator_without_attr_is_rejected() {
        let message = parse_err(json!({"eq": "premium"}));
        assert_eq!(
            message,
            "filter: operator `eq` needs an `attr` key naming the attribute"
        );
    }

    #[test]
    fn an_unknown_key_without_attr_is_rejected() {
        let message = parse_err(json!({"or": []}));
        assert_eq!(
            message,
            "filter: unknown key `or`; expected `all`, `any`, `not` or `attr`"
        );
    }

    #[test]
    fn an_empty_object_is_rejected() {
        assert!(parse_err(json!({})).starts_with("filter: empty object"));
    }

    #[test]
    fn a_logical_key_with_extra_keys_is_rejected() {
        assert_eq!(
            parse_err(json!({"all": [], "any": []})),
            "filter: `all` must be the only key in its node, found also `any`"
        );
        assert_eq!(
            parse_err(json!({"not": {"all": []}, "attr": "x"})),
            "filter: `not` must be the only key in its node, found also `attr`"
        );
    }

    #[test]
    fn nodes_that_are_not_objects_are_rejected() {
        assert_eq!(
            parse_err(json!("tier")),
            "filter: expected a JSON object, got string"
        );
        assert_eq!(
            parse_err(json!({"any": [{"all": []}, [1]]})),
            "filter.any[1]: expected a JSON object, got array"
        );
        assert_eq!(
            parse_err(json!({"not": null})),
            "filter.not: expected a JSON object, got null"
        );
    }

    #[test]
    fn all_and_any_require_an_array() {
        assert_eq!(
            parse_err(json!({"all": {"attr": "a", "eq": 1}})),
            "filter: `all` expects an array of nodes, got object"
        );
        assert_eq!(
            parse_err(json!({"any": "x"})),
            "filter: `any` expects an array of nodes, got string"
        );
    }

    #[test]
    fn ordering_operators_reject_booleans() {
        assert_eq!(
            parse_err(json!({"attr": "active", "lt": true})),
            "filter: operator `lt` expects a string or number, got boolean"
        );
        for op in ["lte", "gt", "gte"] {
            let message = parse_err(json!({"attr": "active", op: false}));
            assert!(
                message.contains(&format!("operator `{op}` expects a string or number")),
                "{message}"
            );
        }
    }

    #[test]
    fn object_array_and_null_operands_are_rejected() {
        for operand in [json!({"a": 1}), json!([1]), Value::Null] {
            let message = parse_err(json!({"attr": "tier", "eq": operand.clone()}));
            let expected = format!(
                "filter: operator `eq` expects a string, number or boolean, got {}",
                json_type_name(&operand)
            );
            assert_eq!(message, expected);
            let message = parse_err(json!({"attr": "tier", "gte": operand}));
            assert!(message.contains("expects a string or number"), "{message}");
        }
    }

    #[test]
    fn in_requires_an_array_of_one_to_a_thousand_scalars() {
        assert_eq!(
            parse_err(json!({"attr": "tier", "in": "x"})),
            "filter: operator `in` expects an array of strings, numbers or booleans, got string"
        );
        assert_eq!(
            parse_err(json!({"attr": "tier", "in": []})),
            "filter: operator `in` needs at least one value"
        );
        assert_eq!(
            parse_err(json!({"all": [{"attr": "tier", "in": ["a", "b", null]}]})),
            "filter.all[0].in[2]: operator `in` expects a string, number or boolean, got null"
        );
        assert!(parse_err(json!({"attr": "tier", "in": [["a"]]})).contains("got array"));
        let thousand: Vec<Value> = (0..1000).map(Value::from).collect();
        parse(json!({"attr": "score", "in": thousand}));
        let too_many: Vec<Value> = (0..1001).map(Value::from).collect();
        assert_eq!(
            parse_err(json!({"attr": "score", "in": too_many})),
            "filter: operator `in` accepts at most 1000 values, got 1001"
        );
    }

    #[test]
    fn exists_requires_a_boolean() {
        assert_eq!(
            parse_err(json!({"attr": "tier", "exists": "yes"})),
            "filter: operator `exists` expects true or false, got string"
        );
        assert!(parse_err(json!({"attr": "tier", "exists": 1})).contains("got number"));
    }

    #[test]
    fn invalid_attribute_names_are_rejected() {
        let long_ok = format!("a{}", "b".repeat(63));
        parse(json!({"attr": long_ok, "exists": true}));
        parse(json!({"attr": "_", "exists": true}));
        let too_long = format!("a{}", "b".repeat(64));
        for bad in [
            "",
            "1tier",
            "tier-name",
            "user.tier",
            "tier name",
            "é",
            "$.tier",
            too_long.as_str(),
        ] {
            let message = parse_err(json!({"attr": bad, "eq": 1}));
            assert!(
                message.starts_with(&format!("filter: invalid attribute name `{bad}`")),
                "{message}"
            );
        }
        assert_eq!(
            parse_err(json!({"attr": 7, "eq": 1})),
            "filter: `attr` must be a string, got number"
        );
    }

    #[test]
    fn nesting_up_to_sixteen_levels_is_accepted_and_deeper_is_rejected() {
        parse(nested_nots(MAX_DEPTH));
        let message = parse_err(nested_nots(MAX_DEPTH + 1));
        assert!(
            message.ends_with("filter is nested deeper than 16 levels"),
            "{message}"
        );
        assert!(message.starts_with("filter.not.not."), "{message}");
        // A deeply nested value far beyond the limit fails fast instead of recursing.
        parse_err(nested_nots(1_000));
    }

    #[test]
    fn more_than_256_nodes_are_rejected() {
        let leaf = json!({"attr": "a", "eq": 1});
        parse(json!({"all": vec![leaf.clone(); MAX_NODES - 1]}));
        assert_eq!(
            parse_err(json!({"all": vec![leaf; MAX_NODES]})),
            "filter.all[255]: filter has more than 256 nodes"
        );
    }

    #[test]
    fn more_than_ten_thousand_operand_values_in_total_are_rejected() {
        let node = json!({"attr": "a", "in": (0..1000).map(Value::from).collect::<Vec<_>>()});
        parse(json!({"all": vec![node.clone(); 10]}));
        let message = parse_err(json!({"all": vec![node; 11]}));
        assert_eq!(
            message,
            "filter.all[10].in[0]: filter has more than 10000 operand values in total"
        );
    }

    #[test]
    fn relative_times_resolve_against_now_at_second_precision() {
        let cases = [
            ("now", "2024-06-15T12:30:45Z"),
            ("now-30d", "2024-05-16T12:30:45Z"),
            ("now+2h", "2024-06-15T14:30:45Z"),
            ("now-1w", "2024-06-08T12:30:45Z"),
            ("now-90s", "2024-06-15T12:29:15Z"),
            ("now+5m", "2024-06-15T12:35:45Z"),
            ("now-0d", "2024-06-15T12:30:45Z"),
            ("now-007d", "2024-06-08T12:30:45Z"),
        ];
        for (raw, expected) in cases {
            let Ok(Some(offset)) = parse_relative_time(raw) else {
                panic!("{raw} should be a relative time");
            };
            assert_eq!(resolve_relative(now(), offset), expected, "{raw}");
            let filter = parse(json!({"attr": "t", "eq": raw}));
            assert!(
                filter.matches(&attrs(json!({"t": expected})), now()),
                "{raw}"
            );
            assert_eq!(filter.to_json(), json!({"attr": "t", "eq": raw}));
        }
    }

    #[test]
    fn strings_that_merely_look_like_relative_times_are_literals() {
        for literal in [
            "nowhere", "now-", "now-d", "now-5", "now-5x", "now-5dd", "NOW", "now -5d", "now-+5d",
            "now-5é",
        ] {
            assert_eq!(parse_relative_time(literal), Ok(None), "{literal}");
            assert!(matches(
                json!({"attr": "t", "eq": literal}),
                json!({ "t": literal })
            ));
        }
    }

    #[test]
    fn relative_times_beyond_a_hundred_years_are_rejected() {
        parse(json!({"attr": "t", "gte": "now-36525d"}));
        for raw in [
            "now-36526d",
            "now+99999999999999999999999s",
            "now-18446744073709551615w",
        ] {
            let message = parse_err(json!({"attr": "t", "gte": raw}));
            assert!(
                message.starts_with(&format!("filter: relative time `{raw}` is out of range")),
                "{message}"
            );
        }
        let message = parse_err(json!({"attr": "t", "in": ["a", "now-999999w"]}));
        assert!(
            message.starts_with("filter.in[1]: relative time"),
            "{message}"
        );
    }

    #[test]
    fn relative_times_saturate_at_the_edges_of_the_calendar() {
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            resolve_relative(far, 60),
            far.format(TIME_FORMAT).to_string()
        );
    }

    #[test]
    fn eq_requires_the_same_json_type() {
        let user =
            json!({"s": "5", "n": 5, "f": 5.0, "b": true, "one": 1, "null": null, "arr": [5]});
        assert!(matches(json!({"attr": "s", "eq": "5"}), user.clone()));
        assert!(!matches(json!({"attr": "s", "eq": 5}), user.clone()));
        assert!(!matches(json!({"attr": "n", "eq": "5"}), user.clone()));
        assert!(matches(json!({"attr": "n", "eq": 5.0}), user.clone()));
        assert!(matches(json!({"attr": "f", "eq": 5}), user.clone()));
        assert!(matches(json!({"attr": "b", "eq": true}), user.clone()));
        assert!(!matches(json!({"attr": "b", "eq": false}), user.clone()));
        assert!(!matches(json!({"attr": "one", "eq": true}), user.clone()));
        assert!(!matches(json!({"attr": "b", "eq": 1}), user.clone()));
        assert!(!matches(json!({"attr": "b", "eq": "true"}), user.clone()));
        assert!(!matches(
            json!({"attr": "null", "eq": "null"}),
            user.clone()
        ));
        assert!(!matches(json!({"attr": "arr", "eq": 5}), user.clone()));
        assert!(!matches(json!({"attr": "missing", "eq": 5}), user));
    }

    #[test]
    fn string_comparison_is_byte_wise_case_sensitive_and_keeps_trailing_spaces() {
        let user = json!({"tier": "Premium", "code": "abc "});
        assert!(!matches(
            json!({"attr": "tier", "eq": "premium"}),
            user.clone()
        ));
        assert!(!matches(json!({"attr": "code", "eq": "abc"}), user.clone()));
        assert!(matches(json!({"attr": "code", "gt": "abc"}), user.clone()));
        // Byte order: uppercase sorts before lowercase.
        assert!(matches(json!({"attr": "tier", "lt": "a"}), user.clone()));
        assert!(matches(
            json!({"attr": "tier", "gte": "Premium"}),
            user.clone()
        ));
        assert!(matches(
            json!({"attr": "tier", "lte": "Premium"}),
            user.clone()
        ));
        assert!(!matches(json!({"attr": "tier", "gt": "Premium"}), user));
    }

    #[test]
    fn ne_is_exactly_the_negation_of_eq() {
        assert!(matches(json!({"attr": "tier", "ne": "premium"}), json!({})));
        assert!(matches(
            json!({"attr": "tier", "ne": "premium"}),
            json!({"tier": null})
        ));
        assert!(matches(
            json!({"attr": "tier", "ne": "premium"}),
            json!({"tier": 3})
        ));
        assert!(matches(
            json!({"attr": "tier", "ne": "premium"}),
            json!({"tier": "basic"})
        ));
        assert!(!matches(
            json!({"attr": "tier", "ne": "premium"}),
            json!({"tier": "premium"})
        ));
    }

    #[test]
    fn ordering_operators_need_an_attribute_of_the_operand_type() {
        let user = json!({"score": 10, "ratio": 0.5, "name": "m", "flag": true});
        assert!(matches(json!({"attr": "score", "gt": 9.5}), user.clone()));
        assert!(matches(json!({"attr": "score", "gte": 10}), user.clone()));
        assert!(!matches(json!({"attr": "score", "lt": 10}), user.clone()));
        assert!(matches(json!({"attr": "score", "lte": 10.0}), user.clone()));
        assert!(matches(json!({"attr": "ratio", "lt": 1}), user.clone()));
        // Numbers are not strings and vice versa, in both directions.
        assert!(!matches(json!({"attr": "score", "lt": "99"}), user.clone()));
        assert!(!matches(json!({"attr": "score", "gt": "1"}), user.clone()));
        assert!(!matches(json!({"attr": "name", "gt": 0}), user.clone()));
        assert!(!matches(json!({"attr": "flag", "gt": 0}), user.clone()));
        assert!(!matches(
            json!({"attr": "missing", "lt": 100}),
            user.clone()
        ));
        assert!(matches(
            json!({"not": {"attr": "missing", "lt": 100}}),
            user
        ));
    }

    #[test]
    fn in_matches_when_any_value_is_eq() {
        let filter = json!({"attr": "v", "in": ["a", 2, true]});
        assert!(matches(filter.clone(), json!({"v": "a"})));
        assert!(matches(filter.clone(), json!({"v": 2.0})));
        assert!(matches(filter.clone(), json!({"v": true})));
        assert!(!matches(filter.clone(), json!({"v": "A"})));
        assert!(!matches(filter.clone(), json!({"v": "2"})));
        assert!(!matches(filter.clone(), json!({"v": false})));
        assert!(!matches(filter.clone(), json!({"v": 1})));
        assert!(!matches(filter, json!({})));
    }

    #[test]
    fn exists_treats_null_as_absent() {
        let yes = json!({"attr": "tier", "exists": true});
        let no = json!({"attr": "tier", "exists": false});
        for (user, present) in [
            (json!({"tier": "x"}), true),
            (json!({"tier": false}), true),
            (json!({"tier": []}), true),
            (json!({"tier": null}), false),
            (json!({}), false),
        ] {
            assert_eq!(matches(yes.clone(), user.clone()), present, "{user}");
            assert_eq!(matches(no.clone(), user.clone()), !present, "{user}");
        }
    }

    #[test]
    fn relative_times_select_recently_active_users() {
        let filter = json!({"all": [
            {"attr": "tier", "eq": "premium"},
            {"attr": "last_active_at", "gte": "now-30d"}
        ]});
        assert!(matches(
            filter.clone(),
            json!({"tier": "premium", "last_active_at": "2024-06-01T00:00:00Z"})
        ));
        assert!(matches(
            filter.clone(),
            json!({"tier": "premium", "last_active_at": "2024-05-16T12:30:45Z"})
        ));
        assert!(!matches(
            filter.clone(),
            json!({"tier": "premium", "last_active_at": "2024-05-16T12:30:44Z"})
        ));
        assert!(!matches(
            filter.clone(),
            json!({"tier": "basic", "last_active_at": "2024-06-01T00:00:00Z"})
        ));
        assert!(!matches(filter, json!({"tier": "premium"})));
    }

    #[test]
    fn logical_nodes_combine_predicates() {
        let filter = json!({"any": [
            {"all": [{"attr": "a", "eq": 1}, {"attr": "b", "eq": 2}]},
            {"not": {"attr": "c", "exists": true}}
        ]});
        assert!(matches(filter.clone(), json!({"a": 1, "b": 2, "c": 0})));
        assert!(!matches(filter.clone(), json!({"a": 1, "b": 3, "c": 0})));
        assert!(matches(filter.clone(), json!({"a": 1, "b": 3})));
        assert!(matches(filter, json!({"c": null})));
    }

    #[test]
    fn serde_round_trips_through_text_and_preserves_parse_errors() {
        let filter = parse(
            json!({"any": [{"attr": "tier", "in": ["a", 1, true]}, {"not": {"attr": "x", "exists": true}}]}),
        );
        let text = serde_json::to_string(&filter).expect("serialises");
        assert_eq!(
            text,
            r#"{"any":[{"attr":"tier","in":["a",1,true]},{"not":{"attr":"x","exists":true}}]}"#
        );
        let back: Filter = serde_json::from_str(&text).expect("deserialises");
        assert_eq!(back, filter);
        let err =
            serde_json::from_str::<Filter>(r#"{"attr":"tier","like":"x"}"#).expect_err("rejected");
        // The field holding the filter is named by the caller, so the root is dropped.
        assert_eq!(
            err.to_string(),
            "unknown operator `like`; expected one of eq, ne, lt, lte, gt, gte, in, exists"
        );
        let nested = serde_json::from_str::<Filter>(r#"{"all":[{"attr":"tier","like":"x"}]}"#)
            .expect_err("rejected");
        assert!(
            nested.to_string().starts_with("all[0]: unknown operator"),
            "{nested}"
        );
    }

    #[test]
    fn sql_binds_paths_and_operands_as_parameters() {
        let filter = parse(json!({"all": [
            {"attr": "tier", "eq": "x' OR 1=1 --"},
            {"attr": "score", "gte": 10},
            {"attr": "last_active_at", "gte": "now-1d"},
            {"attr": "active", "eq": true}
        ]}));
        for dialect in [SqlDialect::Sqlite, SqlDialect::Mysql] {
            let fragment = filter.to_sql(dialect, "u.attributes", now());
            assert!(!fragment.sql.contains("OR 1=1"), "{}", fragment.sql);
            assert_eq!(fragment.sql.matches('?').count(), fragment.params.len());
            assert!(fragment
                .params
                .contains(&SqlParam::Text("x' OR 1=1 --".to_owned())));
            assert!(fragment.params.contains(&SqlParam::Float(10.0)));
            assert!(fragment
                .params
                .contains(&SqlParam::Text("2024-06-14T12:30:45Z".to_owned())));
            match dialect {
                // Paths are bound.
                SqlDialect::Mysql => {
                    assert!(!fragment.sql.contains("tier"), "{}", fragment.sql);
                    assert_eq!(
                        fragment.params.first(),
                        Some(&SqlParam::Text("$.\"tier\"".to_owned()))
                    );
                }
                // Paths of comparisons are literals (so an index on the same expression
                // serves them), made of validated names only.
                SqlDialect::Sqlite => {
                    assert!(fragment.sql.contains("'$.\"tier\"'"), "{}", fragment.sql);
                    assert_eq!(
                        fragment.params.first(),
                        Some(&SqlParam::Text("x' OR 1=1 --".to_owned()))
                    );
                }
            }
        }
        // A name that could leave the literal never gets that far.
        assert!(Filter::parse(&json!({"attr": "a'b", "eq": 1})).is_err());
        assert!(Filter::parse(&json!({"attr": "a\"b", "eq": 1})).is_err());
    }

    #[test]
    fn sql_for_empty_logical_nodes_is_constant() {
        let sql = |v: Value| parse(v).to_sql(SqlDialect::Sqlite, "attributes", now());
        assert_eq!(
            sql(json!({"all": []})),
            SqlFragment {
                sql: "(1 = 1)".to_owned(),
                params: vec![]
            }
        );
        assert_eq!(sql(json!({"any": []})).sql, "(1 = 0)");
        assert_eq!(
            sql(json!({"not": {"all": []}})).sql,
            "(NOT COALESCE((1 = 1), 0))"
        );
    }

    #[test]
    fn sqlite_sql_guards_each_comparison_by_json_type() {
        let fragment = parse(json!({"attr": "v", "in": ["a", 1, true]})).to_sql(
            SqlDialect::Sqlite,
            "attributes",
            now(),
        );
        assert_eq!(
            fragment.sql,
            "(((CASE WHEN json_type(attributes, '$.\"v\"') = 'text' THEN json_extract(attributes, '$.\"v\"') END) IN (?)) \
             OR ((CASE WHEN json_type(attributes, '$.\"v\"') IN ('integer', 'real') THEN CAST(json_extract(attributes, '$.\"v\"') AS REAL) END) IN (?)) \
             OR ((CASE WHEN json_type(attributes, '$.\"v\"') IN ('true', 'false') THEN json_type(attributes, '$.\"v\"') END) IN ('true')))"
        );
        assert_eq!(
            fragment.params,
            vec![SqlParam::Text("a".to_owned()), SqlParam::Float(1.0)]
        );
    }

    #[test]
    fn mysql_sql_compares_strings_as_binary_and_numbers_as_double() {
        let sql = |v: Value| parse(v).to_sql(SqlDialect::Mysql, "attributes", now()).sql;
        assert_eq!(
            sql(json!({"attr": "v", "lt": "b"})),
            "(CASE WHEN JSON_TYPE(JSON_EXTRACT(attributes, ?)) = 'STRING' \
             THEN CAST(JSON_UNQUOTE(JSON_EXTRACT(attributes, ?)) AS BINARY) < CAST(? AS BINARY) ELSE 0 END)"
        );
        assert_eq!(
            sql(json!({"attr": "v", "ne": 2})),
            "(NOT (CASE WHEN JSON_TYPE(JSON_EXTRACT(attributes, ?)) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') \
             THEN CAST(JSON_EXTRACT(attributes, ?) AS DOUBLE) IN (?) ELSE 0 END))"
        );
        assert_eq!(
            sql(json!({"attr": "v", "exists": false})),
            "(COALESCE(JSON_TYPE(JSON_EXTRACT(attributes, ?)), 'NULL') = 'NULL')"
        );
    }

    fn arb_attr() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("tier".to_owned()),
            Just("last_active_at".to_owned()),
            "[A-Za-z_][A-Za-z0-9_]{0,63}",
        ]
    }

    fn arb_scalar(allow_bool: bool) -> BoxedStrategy<Value> {
        let strings = prop_oneof![
            Just("now".to_owned()),
            (
                prop_oneof![Just('-'), Just('+')],
                0u32..5_000,
                prop_oneof![Just('s'), Just('m'), Just('h'), Just('d'), Just('w')]
            )
                .prop_map(|(sign, n, unit)| format!("now{sign}{n}{unit}")),
            any::<String>(),
        ];
        let numbers = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter_map("finite", Number::from_f64)
                .prop_map(Value::Number),
        ];
        if allow_bool {
            prop_oneof![
                strings.prop_map(Value::String),
                numbers,
                any::<bool>().prop_map(Value::Bool)
            ]
            .boxed()
        } else {
            prop_oneof![strings.prop_map(Value::String), numbers].boxed()
        }
    }

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            (
                arb_attr(),
                prop_oneof![Just("eq"), Just("ne")],
                arb_scalar(true)
            )
                .prop_map(|(attr, op, v)| json!({"attr": attr, op: v})),
            (
                arb_attr(),
                prop_oneof![Just("lt"), Just("lte"), Just("gt"), Just("gte")],
                arb_scalar(false)
            )
                .prop_map(|(attr, op, v)| json!({"attr": attr, op: v})),
            (arb_attr(), prop::collection::vec(arb_scalar(true), 1..8))
                .prop_map(|(attr, vs)| json!({"attr": attr, "in": vs})),
            (arb_attr(), any::<bool>()).prop_map(|(attr, b)| json!({"attr": attr, "exists": b})),
        ]
    }

    fn arb_filter_json() -> impl Strategy<Value = Value> {
        arb_leaf().prop_recursive(5, 64, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|v| json!({ "all": v })),
                prop::collection::vec(inner.clone(), 0..5).prop_map(|v| json!({ "any": v })),
                inner.prop_map(|v| json!({ "not": v })),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_filters_round_trip_through_to_json_and_parse(json in arb_filter_json()) {
            let filter = Filter::parse(&json).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(&filter.to_json(), &json);
            let again = Filter::parse(&filter.to_json()).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(again, filter);
        }

        #[test]
        fn a_filter_decides_alike_on_the_attributes_it_names_alone(
            json in arb_filter_json(),
            values in prop::collection::vec(arb_scalar(true), 8),
            others in prop::collection::vec(arb_scalar(true), 3),
        ) {
            let filter = Filter::parse(&json).map_err(|e| TestCaseError::fail(e.message))?;
            let names = filter.attributes();
            // The user has some of the named attributes (by position), and others besides.
            let mut user = Map::new();
            for (name, value) in names.iter().zip(values.iter()).step_by(2) {
                user.insert(name.clone(), value.clone());
            }
            for (i, value) in others.into_iter().enumerate() {
                user.insert(format!("unnamed_{i}"), value);
            }
            let mut alone = user.clone();
            alone.retain(|k, _| names.contains(k));
            prop_assert_eq!(filter.matches(&alone, now()), filter.matches(&user, now()));
            // Exactly the attributes the filter's clauses name.
            fn named(v: &Value, out: &mut std::collections::BTreeSet<String>) {
                match v {
                    Value::Object(o) => {
                        if let Some(Value::String(a)) = o.get("attr") {
                            out.insert(a.clone());
                        }
                        o.values().for_each(|v| named(v, out));
                    }
                    Value::Array(a) => a.iter().for_each(|v| named(v, out)),
                    _ => {}
                }
            }
            let mut in_json = std::collections::BTreeSet::new();
            named(&json, &mut in_json);
            prop_assert_eq!(names, in_json);
        }

        #[test]
        fn sql_placeholders_always_match_the_parameter_count(json in arb_filter_json()) {
            let filter = Filter::parse(&json).map_err(|e| TestCaseError::fail(e.message))?;
            for dialect in [SqlDialect::Sqlite, SqlDialect::Mysql] {
                let fragment = filter.to_sql(dialect, "attributes", now());
                prop_assert_eq!(fragment.sql.matches('?').count(), fragment.params.len());
            }
        }
    }
}
