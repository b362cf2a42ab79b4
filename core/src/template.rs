//! Template rendering: `{{ user.tier }}` and `{{ data.order_id }}` placeholders, rendered with
//! minijinja in a sandbox that cannot read files or call out. Undefined variables render as
//! empty strings (a missing attribute must not fail a whole batch), but syntax errors are caught
//! when a template is stored or a campaign is created. A field made of text and plain lookups
//! alone (`Hello {{ user.name }}`) is rendered without the VM, to the same output
//! ([`Substitutions`]).
//!
//! Template work is bounded, since templates and the values they insert come from users: each
//! render of a field gets [`FUEL`] instructions, at most [`RECURSION_LIMIT`] levels of nesting,
//! and [`MAX_FIELD_OUTPUT`] bytes of output. A template that exceeds a limit whatever the data
//! (nested loops, `{{ "x" * 100000000 }}`) is refused when it is stored or a campaign is
//! created ([`Compiled::check_limits`]); one that exceeds it for some recipients' data fails
//! for those recipients only, with a reason naming the limit. Rendering is CPU work: callers on
//! an async runtime run it on a blocking thread.

use crate::model::{Channel, User};
use crate::topics::ChannelItem;
use crate::{Error, Result};
use minijinja::value::{Enumerator, Object};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// Instructions one render of one field may execute.
pub const FUEL: u64 = 100_000;
/// Nesting one render may reach (loops, conditions, macro calls).
pub const RECURSION_LIMIT: usize = 64;
/// Bytes one rendered field may have.
pub const MAX_FIELD_OUTPUT: usize = 128 * 1024;

/// An environment with Herald's settings and limits.
fn limited_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = limited_env();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env
    })
}

/// Output that refuses to grow past [`MAX_FIELD_OUTPUT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_FIELD_OUTPUT {
            return Err(std::io::Error::other(OUTPUT_LIMIT));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const OUTPUT_LIMIT: &str = "output limit";

/// Whether a render error is one of the limits (and so would hit every recipient alike when
/// the data plays no part).
fn is_limit(e: &minijinja::Error) -> bool {
    use minijinja::ErrorKind as K;
    match e.kind() {
        K::OutOfFuel | K::WriteFailure => true,
        _ => {
            let text = e.to_string();
            text.contains("recursion") || text.contains("too large") || text.contains("too many")
        }
    }
}

/// The message of a render error: the limits named with their values.
fn render_error(field: &str, e: &minijinja::Error) -> Error {
    use minijinja::ErrorKind as K;
    let why = match e.kind() {
        K::OutOfFuel => format!("uses more than the {FUEL} template instructions a render may"),
        K::WriteFailure => format!("renders more than {MAX_FIELD_OUTPUT} bytes"),
        _ if e.to_string().contains("recursion") => {
            format!("nests deeper than {RECURSION_LIMIT} levels")
        }
        _ => format!("does not render: {e}"),
    };
    Error::invalid(format!("{field}: template {why}"))
}

/// Renders `tmpl` into bounded output.
fn render_bounded(
    field: &str,
    tmpl: &minijinja::Template<'_, '_>,
    ctx: &minijinja::Value,
) -> Result<String> {
    let mut out = Bounded(Vec::new());
    tmpl.render_captured_to(ctx, &mut out)
        .map_err(|e| render_error(field, &e))?;
    String::from_utf8(out.0).map_err(|_| Error::invalid(format!("{field}: rendered invalid UTF-8")))
}

/// Notification text is not HTML and is sent as it renders; an HTML field (`email.html`)
/// escapes every value it inserts, so user attributes and event data cannot inject markup.
/// A template author who means to insert trusted HTML says so with `|safe`.
fn auto_escape(name: &str) -> minijinja::AutoEscape {
    if name.ends_with(".html") {
        minijinja::AutoEscape::Html
    } else {
        minijinja::AutoEscape::None
    }
}

/// Checks that `text` compiles; the error names the field and the problem.
pub fn check(field: &str, text: &str) -> Result<()> {
    env()
        .template_from_str(text)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("{field}: template does not compile: {e}")))
}

/// The campaign's data as a template value: convert it once per batch, not once per user.
pub fn data_value(data: &Value) -> minijinja::Value {
    minijinja::Value::from_serialize(data)
}

/// The rendering context of one user: `user` (id, email, phone, attributes by name) and
/// `data` (from [`data_value`]). An object that looks a value up when a template asks for it:
/// the fan-out renders a million users' contexts, and converting every attribute of every
/// user into a template value (a map per user, a value per attribute) was most of a render's
/// cost, while a template reads one or two of them.
pub fn context(user: &Arc<User>, data: &minijinja::Value) -> minijinja::Value {
    minijinja::Value::from_object(RenderContext {
        user: minijinja::Value::from_object(UserView(user.clone())),
        data: data.clone(),
    })
}

/// The top of a user's rendering context. A digest's notification (see `DigestRule`) carries
/// its events and their count in its data; its template also sees them at the top:
/// `{{ count }}`, `{% for e in events %}`.
#[derive(Debug)]
struct RenderContext {
    user: minijinja::Value,
    data: minijinja::Value,
}

impl Object for RenderContext {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match key.as_str()? {
            "user" => Some(self.user.clone()),
            "data" => Some(self.data.clone()),
            top @ ("events" | "count") => self.data.get_attr(top).ok(),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["count", "data", "events", "user"])
    }
}

/// `user` in a template: `id`, `email` and `phone` (when set; else an attribute of that name),
/// and the attributes by name, each converted when it is read.
#[derive(Debug)]
struct UserView(Arc<User>);

impl Object for UserView {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let user = &self.0;
        let key = key.as_str()?;
        let own = match key {
            "id" => Some(user.id.as_str()),
            "email" => user.email.as_deref(),
            "phone" => user.phone.as_deref(),
            _ => None,
        };
        match own {
            Some(v) => Some(minijinja::Value::from(v)),
            None => user
                .attributes
                .get(key)
                .map(minijinja::Value::from_serialize),
        }
    }

    /// Its names in order, as the map it used to be built as (`{% for k, v in user|items %}`).
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let user = &self.0;
        let mut keys: std::collections::BTreeSet<&str> =
            user.attributes.keys().map(String::as_str).collect();
        keys.insert("id");
        if user.email.is_some() {
            keys.insert("email");
        }
        if user.phone.is_some() {
            keys.insert("phone");
        }
        Enumerator::Values(keys.into_iter().map(minijinja::Value::from).collect())
    }
}

/// The context of content that is the same for everyone (broadcasts): data only.
pub fn context_without_user(data: &Value) -> minijinja::Value {
    minijinja::context! { user => minijinja::Value::from(()), data => data_value(data) }
}

/// The most parts a field rendered by [`Substitutions`] may have. The template VM spends a few
/// instructions per placeholder; under this many parts a render stays far inside [`FUEL`], so
/// the direct path never renders what the VM would refuse for running out of it.
const MAX_SUBSTITUTION_PARTS: usize = 1_000;

/// A field that is literal text and placeholders naming a value alone (`Hello {{ user.name }},
/// order {{ data.order.id }}`), as most notification text is: rendered by copying the text and
/// writing each value, without the template VM (whose per-render setup was most of a plain
/// field's cost in a fan-out). The output is the VM's own: each value is looked up with
/// minijinja's attribute lookup from the same context and written with its `Display`, which is
/// what the VM's output step does without auto-escaping. Anything else (filters, statements,
/// comments, whitespace control, escaped fields, a lookup the VM would fail or a value it would
/// refuse, output over [`MAX_FIELD_OUTPUT`]) goes to the VM, which renders it or says why not.
#[derive(Debug, Clone, PartialEq)]
struct Substitutions(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// `user` or `data`, then one attribute name per step.
    Lookup(Vec<String>),
}

impl Substitutions {
    /// The field's parts, if it is made of text and plain lookups alone.
    fn parse(text: &str) -> Option<Self> {
        // What the VM's lexer does first (minijinja's `keep_trailing_newline` is off).
        let mut source = text;
        if let Some(s) = source.strip_suffix('\n') {
            source = s;
        }
        if let Some(s) = source.strip_suffix('\r') {
            source = s;
        }
        if source.contains("{%") || source.contains("{#") {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let inside = &rest[open + 2..];
            let close = inside.find("}}")?;
            parts.push(Part::Lookup(plain_lookup(&inside[..close])?));
            rest = &inside[close + 2..];
            if parts.len() > MAX_SUBSTITUTION_PARTS {
                return None;
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Some(Self(parts))
    }

    /// The field rendered for `ctx`, or `None` where the VM must render it.
    fn render(&self, ctx: &minijinja::Value) -> Option<String> {
        use minijinja::value::ValueKind;
        use std::fmt::Write as _;
        let room = self.0.iter().map(|p| match p {
            Part::Text(text) => text.len(),
            Part::Lookup(_) => 16,
        });
        let mut out = String::with_capacity(room.sum());
        for part in &self.0 {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Lookup(path) => {
                    let mut value = ctx.clone();
                    for name in path {
                        // An undefined value's attribute is an error in the VM (lenient mode):
                        // `get_attr` fails there too, and the VM then says so itself.
                        value = value.get_attr(name).ok()?;
                        if value.kind() == ValueKind::Invalid {
                            return None;
                        }
                    }
                    write!(out, "{value}").ok()?;
                }
            }
            if out.len() > MAX_FIELD_OUTPUT {
                return None;
            }
        }
        Some(out)
    }
}

/// `user.x` or `data.x.y` between `{{` and `}}` (spaces around it, none inside), as names: an
/// ASCII identifier per step, none of them a word the template language reserves.
fn plain_lookup(inside: &str) -> Option<Vec<String>> {
    const RESERVED: &[&str] = &[
        "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False",
        "None", "loop", "self", "super", "caller", "varargs", "kwargs",
    ];
    let path: Vec<String> = inside
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .split('.')
        .map(str::to_owned)
        .collect();
    let identifier = |name: &str| {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !RESERVED.contains(&name)
    };
    (path.len() >= 2
        && matches!(path[0].as_str(), "user" | "data")
        && path.iter().all(|name| identifier(name)))
    .then_some(path)
}

/// Renders `text` against a context made by [`context`], within the limits.
pub fn render(field: &str, text: &str, ctx: &minijinja::Value) -> Result<String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_owned());
    }
    let tmpl = env()
        .template_from_str(text)
        .map_err(|e| Error::invalid(format!("{field}: template does not compile: {e}")))?;
    render_bounded(field, &tmpl, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn placeholders_render_from_user_attributes_and_campaign_data() {
        let mut user = User {
            id: "u1".into(),
            email: Some("a@example.com".into()),
            phone: None,
            attributes: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        user.attributes.insert("tier".into(), "premium".into());
        let ctx = context(
            &Arc::new(user),
            &data_value(&serde_json::json!({"order_id": 42})),
        );
        let out = render(
            "t",
            "{{ user.id }} {{ user.tier }} {{ user.email }} #{{ data.order_id }}{{ user.missing }}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "u1 premium a@example.com #42");
    }

    #[test]
    fn a_digests_events_and_count_are_seen_at_the_top_and_in_data() {
        let user = User {
            id: "u1".into(),
            email: None,
            phone: None,
            attributes: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let user = Arc::new(user);
        let data = serde_json::json!({"events": [{"t": "a"}, {"t": "b"}], "count": 3});
        let ctx = context(&user, &data_value(&data));
        let out = render(
            "t",
            "{{ count }}/{{ data.count }}:{% for e in events %}{{ e.t }}{% endfor %}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "3/3:ab");
        // Without them (any other campaign) the names are simply undefined.
        let ctx = context(&user, &data_value(&serde_json::json!({})));
        assert_eq!(render("t", "[{{ count }}]", &ctx).unwrap(), "[]");
    }

    #[test]
    fn a_users_names_are_its_attributes_with_id_email_and_phone_over_them() {
        let mut user = User::nameless("u1");
        user.phone = Some("+15550100".into());
        for (k, v) in [
            ("email", "attr@example.com"),
            ("id", "shadowed"),
            ("tier", "gold"),
        ] {
            user.attributes.insert(k.into(), v.into());
        }
        user.attributes.insert("n".into(), serde_json::json!(7));
        let ctx = context(&Arc::new(user), &data_value(&serde_json::json!({})));
        let out = render(
            "t",
            "{{ user.email }} {{ user.id }} {{ user.phone }} {{ user.tier }} {{ user.n + 1 }}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "attr@example.com u1 +15550100 gold 8");
        let items = "{% for k, v in user|items %}{{ k }}={{ v }};{% endfor %}";
        assert_eq!(
            render("t", items, &ctx).unwrap(),
            "email=attr@example.com;id=u1;n=7;phone=+15550100;tier=gold;"
        );
        assert_eq!(render("t", "{{ user|length }}", &ctx).unwrap(), "5");
        assert_eq!(
            render("t", "[{{ nothing }}{{ user.nothing }}]", &ctx).unwrap(),
            "[]"
        );
    }

    #[test]
    fn unclosed_placeholders_do_not_compile() {
        assert!(check("push.title", "Hello {{ user.name").is_err());
        assert!(check("push.title", "Hello {% if %}").is_err());
        assert!(check("push.title", "Hello {{ user.name }}").is_ok());
    }
}

/// A campaign's content compiled once and rendered for many users: fields without
/// placeholders are copied, the others rendered from templates parsed a single time.
#[derive(Debug)]
pub struct Compiled {
    env: Environment<'static>,
    content: crate::model::TemplateContent,
    /// The locale variants, each with the content it falls back to filled in, by tag in
    /// lower case.
    locales: Vec<(String, Compiled)>,
    /// The fields whose output is the same for every recipient (see [`same_for_everyone`]).
    shared: Vec<&'static str>,
    /// The user attributes its fields and its locale variants read (see [`user_keys_read`]).
    user_keys: crate::model::AttributeKeys,
    /// The fields rendered without the template VM (see [`Substitutions`]).
    substitutions: Vec<(&'static str, Substitutions)>,
}

/// Fields rendered once for a whole batch of recipients: a field whose template reads no
/// `user` (`Weekly digest {{ data.week }}`) renders the same for everyone of a campaign, so
/// [`render_in_app`] and [`render_item`] keep its first rendering here and copy it for the
/// next users instead of rendering it again. Keep one for the users of one campaign's data.
#[derive(Default)]
pub struct Memo<'c> {
    done: Vec<(
        &'c Compiled,
        &'static str,
        std::result::Result<String, String>,
    )>,
}

/// Whether a field renders the same for every recipient of one campaign: its template reads
/// nothing but the campaign's data (`data`, a digest's `events` and `count`) and the pure
/// built-in functions. Conservative: a template that names `user` anywhere is rendered per
/// user (minijinja's analysis of the names a template reads misses some reads: the right-hand
/// side of a `set` or `with` that assigns the same name, a filter block's arguments, a macro
/// argument's default), and so is one that includes or imports another field (which may read
/// `user`) or calls `debug` (which prints the whole context).
fn same_for_everyone(tmpl: &minijinja::Template<'_, '_>, text: &str) -> bool {
    if text.contains("user") || reaches_further(text) {
        return false;
    }
    tmpl.undeclared_variables(false).iter().all(|name| {
        matches!(
            name.as_str(),
            "data" | "events" | "count" | "range" | "dict" | "namespace" | "cycler" | "joiner"
        )
    })
}

/// Whether a template may read more than its own text shows: it includes, imports or extends
/// another field, or calls `debug` (which prints the whole context).
fn reaches_further(text: &str) -> bool {
    ["include", "import", "extends", "debug"]
        .iter()
        .any(|w| text.contains(w))
}

/// The attributes of `user` a template reads: the names after `user.` (`{{ user.name }}`,
/// `{% if user.tier == "gold" %}`), or all of them when it names `user` any other way
/// (`user|items`, `user[key]`, `{% set u = user %}`, `{{ user }}`) or includes, imports or
/// extends another field or calls `debug`. A scan of the text rather than of minijinja's name
/// analysis, which misses some reads (see [`same_for_everyone`]): a name that only looks like a
/// read (`data.user.x`, text in a comment) keeps one attribute more, never one fewer.
fn user_keys_read(text: &str) -> crate::model::AttributeKeys {
    use crate::model::AttributeKeys;
    if reaches_further(text) {
        return AttributeKeys::All;
    }
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut names = std::collections::BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("user") {
        let (start, end) = (from + at, from + at + 4);
        from = end;
        // Part of a longer name (`superuser`, `users`, `user_id`): not `user`.
        if (start > 0 && ident(bytes[start - 1])) || bytes.get(end).is_some_and(|&b| ident(b)) {
            continue;
        }
        let Some(rest) = text[end..].trim_start().strip_prefix('.') else {
            return AttributeKeys::All;
        };
        let rest = rest.trim_start();
        let len = rest.bytes().take_while(|&b| ident(b)).count();
        // An attribute name is an ASCII identifier here; anything else (a digit first, a
        // letter outside ASCII) is read as a read of every attribute.
        if len == 0
            || rest.as_bytes()[0].is_ascii_digit()
            || rest.as_bytes().get(len).is_some_and(|b| !b.is_ascii())
        {
            return AttributeKeys::All;
        }
        // `user.id` is the user's own id, never an attribute (`UserView`); `email` and
        // `phone` fall back to an attribute of that name when unset, so they are kept.
        if &rest[..len] != "id" {
            names.insert(rest[..len].to_owned());
        }
    }
    AttributeKeys::Only(names)
}

impl Compiled {
    /// Compiles every field of `content` and of its locale variants (each variant completed
    /// along its fallback chain: `pt-BR` over `pt` over the content itself); errors name the
    /// field.
    pub fn new(mut content: crate::model::TemplateContent) -> Result<Self> {
        let variants = std::mem::take(&mut content.locales);
        let by_tag: std::collections::HashMap<String, &crate::model::TemplateContent> = variants
            .iter()
            .map(|(tag, v)| (tag.to_ascii_lowercase(), v))
            .collect();
        let mut locales = Vec::with_capacity(variants.len());
        for tag in variants.keys() {
            let tag = tag.to_ascii_lowercase();
            // The declared tags this one falls back to, shortest first, then itself.
            let subtags: Vec<&str> = tag.split('-').collect();
            let mut effective = content.clone();
            for n in 1..=subtags.len() {
                if let Some(v) = by_tag.get(&subtags[..n].join("-")) {
                    effective = effective.overlaid(v);
                }
            }
            let compiled = Self::new(effective)
                .map_err(|e| Error::invalid(format!("locales.{tag}: {}", e.message)))?;
            locales.push((tag, compiled));
        }
        let mut compiled = Self::compile(content)?;
        for (_, variant) in &locales {
            compiled.user_keys =
                std::mem::take(&mut compiled.user_keys).union(variant.user_keys.clone());
        }
        compiled.locales = locales;
        Ok(compiled)
    }

    /// Whether the content has variants per locale: without them every user gets this content,
    /// and a user's `locale` attribute need not be read at all.
    pub fn has_locales(&self) -> bool {
        !self.locales.is_empty()
    }

    /// The content for `user`: [`Compiled::for_locale`] of the user's `locale` attribute,
    /// looked up only when the content has variants (a fan-out does this once per recipient).
    pub fn for_user(&self, user: &crate::model::User) -> &Compiled {
        if self.has_locales() {
            self.for_locale(user.locale())
        } else {
            self
        }
    }

    /// The content for a user whose locale is `locale`: the variant of the longest declared
    /// tag it starts with (`pt-BR-x` → `pt-BR` → `pt`, without case, `_` read as `-`), or this
    /// content.
    pub fn for_locale(&self, locale: Option<&str>) -> &Compiled {
        let Some(locale) = locale.filter(|_| !self.locales.is_empty()) else {
            return self;
        };
        let mut tag = locale.to_ascii_lowercase().replace('_', "-");
        loop {
            if let Some((_, c)) = self.locales.iter().find(|(t, _)| *t == tag) {
                return c;
            }
            match tag.rfind('-') {
                Some(i) => tag.truncate(i),
                None => return self,
            }
        }
    }

    fn compile(content: crate::model::TemplateContent) -> Result<Self> {
        let mut env = limited_env();
        env.set_auto_escape_callback(auto_escape);
        let mut shared = Vec::new();
        let mut substitutions = Vec::new();
        let mut user_keys = crate::model::AttributeKeys::none();
        for (name, text) in content.fields() {
            if text.contains("{{") || text.contains("{%") {
                user_keys = user_keys.union(user_keys_read(text));
                env.add_template_owned(name.to_owned(), text.to_owned())
                    .map_err(|e| {
                        Error::invalid(format!("{name}: template does not compile: {e}"))
                    })?;
                if auto_escape(name) == minijinja::AutoEscape::None {
                    if let Some(s) = Substitutions::parse(text) {
                        substitutions.push((name, s));
                    }
                }
                if env
                    .get_template(name)
                    .is_ok_and(|t| same_for_everyone(&t, text))
                {
                    shared.push(name);
                }
            }
        }
        Ok(Self {
            env,
            content,
            locales: Vec::new(),
            shared,
            user_keys,
            substitutions,
        })
    }

    /// Inline campaign content (a title and a body) as content for every channel.
    pub fn inline(title: &str, body: &str) -> Result<Self> {
        use crate::model::*;
        let tb = TitleBody {
            title: title.to_owned(),
            body: body.to_owned(),
        };
        Self::new(TemplateContent {
            in_app: Some(tb.clone()),
            push: Some(tb),
            email: Some(EmailContent {
                subject: title.to_owned(),
                text: body.to_owned(),
                html: None,
            }),
            sms: Some(SmsContent {
                text: body.to_owned(),
            }),
            webhook: Some(WebhookContent {
                body: body.to_owned(),
            }),
            locales: Default::default(),
        })
    }

    pub fn content(&self) -> &crate::model::TemplateContent {
        &self.content
    }

    /// The user attributes its templates read, in any locale variant: a user read with these
    /// alone renders the same as with all of them.
    pub fn user_keys(&self) -> &crate::model::AttributeKeys {
        &self.user_keys
    }

    /// Renders field `name` (e.g. `push.title`) whose source is `text`, for one user's
    /// context, within the limits.
    pub fn render(&self, name: &str, text: &str, ctx: &minijinja::Value) -> Result<String> {
        let direct = self
            .substitutions
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, s)| s.render(ctx));
        if let Some(out) = direct {
            return Ok(out);
        }
        match self.env.get_template(name) {
            Ok(t) => render_bounded(name, &t, ctx),
            Err(_) => Ok(text.to_owned()),
        }
    }

    /// Like [`Compiled::render`], but a field that renders the same for every recipient is
    /// rendered once per `memo` and copied after that (an error too: it fails every user alike).
    pub fn render_shared<'c>(
        &'c self,
        name: &'static str,
        text: &str,
        ctx: &minijinja::Value,
        memo: &mut Memo<'c>,
    ) -> Result<String> {
        if !self.shared.contains(&name) {
            return self.render(name, text, ctx);
        }
        let kept = memo
            .done
            .iter()
            .find(|(c, n, _)| std::ptr::eq(*c, self) && *n == name);
        if let Some((_, _, out)) = kept {
            return out.clone().map_err(Error::invalid);
        }
        let out = self.render(name, text, ctx);
        let keep = match &out {
            Ok(text) => Ok(text.clone()),
            Err(e) => Err(e.message.clone()),
        };
        memo.done.push((self, name, keep));
        out
    }

    /// Refuses content that exceeds a limit whatever the data: every field is rendered once
    /// for a user with no attributes and empty data, and a limit hit there is an error. Other
    /// render errors are left to the real data (they may depend on it).
    pub fn check_limits(&self) -> Result<()> {
        for (tag, variant) in &self.locales {
            variant
                .check_limits()
                .map_err(|e| Error::invalid(format!("locales.{tag}: {}", e.message)))?;
        }
        let ctx = minijinja::context! {
            user => minijinja::context! { id => "example" },
            data => minijinja::context! {},
        };
        for (name, text) in self.content.fields() {
            if let Ok(t) = self.env.get_template(name) {
                let mut out = Bounded(Vec::new());
                if let Err(e) = t.render_captured_to(&ctx, &mut out) {
                    if is_limit(&e) {
                        return Err(render_error(name, &e));
                    }
                }
            } else {
                debug_assert!(!text.contains("{{") && !text.contains("{%"));
            }
        }
        Ok(())
    }
}

fn missing(ch: Channel) -> Error {
    Error::invalid(format!("the campaign's template has no {ch} content"))
}

/// A user's inbox title and body from `content` (the user's locale variant).
pub fn render_in_app<'c>(
    content: &'c Compiled,
    render_ctx: &minijinja::Value,
    memo: &mut Memo<'c>,
) -> Result<(String, String)> {
    let tb = content
        .content()
        .in_app
        .as_ref()
        .ok_or_else(|| missing(Channel::InApp))?;
    Ok((
        content.render_shared("in_app.title", &tb.title, render_ctx, memo)?,
        content.render_shared("in_app.body", &tb.body, render_ctx, memo)?,
    ))
}

/// A broadcast's title and body: the same for everyone, so placeholders see the campaign
/// data only; from its in-app content, else its push content, else its email content.
pub fn broadcast_text(content: &Compiled, data: &Value) -> Result<(String, String)> {
    let render_ctx = context_without_user(data);
    let c = content.content();
    let (title, body, title_field, body_field) = if let Some(tb) = &c.in_app {
        (&tb.title, &tb.body, "in_app.title", "in_app.body")
    } else if let Some(tb) = &c.push {
        (&tb.title, &tb.body, "push.title", "push.body")
    } else if let Some(e) = &c.email {
        (&e.subject, &e.text, "email.subject", "email.text")
    } else {
        return Err(Error::invalid(
            "a broadcast needs in_app, push or email content",
        ));
    };
    Ok((
        content.render(title_field, title, &render_ctx)?,
        content.render(body_field, body, &render_ctx)?,
    ))
}

/// One user's item on an outbound channel, rendered from `content` (the user's locale
/// variant); `None` when the user has no address for it (no email, no phone) and for the
/// inbox, which is not an outbound channel.
pub fn render_item<'c>(
    ch: Channel,
    content: &'c Compiled,
    user: &User,
    nid: uuid::Uuid,
    data: &Value,
    render_ctx: &minijinja::Value,
    memo: &mut Memo<'c>,
) -> Result<Option<ChannelItem>> {
    let c = content.content();
    let mut item = ChannelItem {
        user_id: user.id.clone(),
        notification_id: nid,
        email: None,
        phone: None,
        title: None,
        body: String::new(),
        html: None,
        data: data.clone(),
        targets: None,
    };
    match ch {
        Channel::Push => {
            let tb = c.push.as_ref().ok_or_else(|| missing(ch))?;
            item.title = Some(content.render_shared("push.title", &tb.title, render_ctx, memo)?);
            item.body = content.render_shared("push.body", &tb.body, render_ctx, memo)?;
        }
        Channel::Email => {
            let Some(email) = &user.email else {
                return Ok(None);
            };
            let e = c.email.as_ref().ok_or_else(|| missing(ch))?;
            item.email = Some(email.clone());
            item.title =
                Some(content.render_shared("email.subject", &e.subject, render_ctx, memo)?);
            item.body = content.render_shared("email.text", &e.text, render_ctx, memo)?;
            if let Some(html) = &e.html {
                item.html = Some(content.render_shared("email.html", html, render_ctx, memo)?);
            }
        }
        Channel::Sms => {
            let Some(phone) = &user.phone else {
                return Ok(None);
            };
            let s = c.sms.as_ref().ok_or_else(|| missing(ch))?;
            item.phone = Some(phone.clone());
            item.body = content.render_shared("sms.text", &s.text, render_ctx, memo)?;
        }
        Channel::Webhook => {
            let w = c.webhook.as_ref().ok_or_else(|| missing(ch))?;
            item.body = content.render_shared("webhook.body", &w.body, render_ctx, memo)?;
        }
        Channel::InApp => return Ok(None),
    }
    Ok(Some(item))
}

#[cfg(test)]
mod substitution_tests {
    use super::*;
    use crate::model::{TemplateContent, TitleBody};
    use proptest::prelude::*;

    fn users() -> Vec<Arc<User>> {
        let mut full = User::nameless("u-1");
        full.email = Some("a@example.com".into());
        for (k, v) in [
            ("tier", serde_json::json!("gold")),
            ("n", serde_json::json!(7)),
            ("big", serde_json::json!(u64::MAX)),
            ("f", serde_json::json!(2.0)),
            ("yes", serde_json::json!(true)),
            ("nothing", serde_json::Value::Null),
            ("list", serde_json::json!([1, "a", null])),
            ("obj", serde_json::json!({"a": 1, "b": "c"})),
            ("id", serde_json::json!("shadowed")),
            ("html", serde_json::json!("<b>&'\"")),
        ] {
            full.attributes.insert(k.into(), v);
        }
        vec![Arc::new(full), Arc::new(User::nameless("bare"))]
    }

    fn data() -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"order": {"id": 42, "total": 1.5, "lines": [{"sku": "a"}]},
                "flag": false, "none": null, "s": "x<y", "user": {"id": "data-user"}}),
            serde_json::json!({}),
            serde_json::json!({"order": "not a map"}),
        ]
    }

    /// The field rendered by the template VM alone.
    fn through_vm(c: &Compiled, name: &str, ctx: &minijinja::Value) -> Result<String> {
        render_bounded(name, &c.env.get_template(name).unwrap(), ctx)
    }

    const PIECES: &[&str] = &[
        "Hello ",
        " ",
        "{",
        "}",
        "}}",
        "{ ",
        "\n",
        "\r\n",
        "\t",
        "é ✓",
        "-",
        ".",
        "{{ user.id }}",
        "{{user.tier}}",
        "{{ user.n }}",
        "{{ user.big }}",
        "{{ user.f }}",
        "{{ user.yes }}",
        "{{ user.nothing }}",
        "{{ user.list }}",
        "{{ user.obj }}",
        "{{ user.obj.a }}",
        "{{ user.obj.zz }}",
        "{{ user.tier.x }}",
        "{{ user.missing }}",
        "{{ user.missing.deeper }}",
        "{{ user.email }}",
        "{{ user.phone }}",
        "{{ user.html }}",
        "{{\tdata.order.id\n}}",
        "{{ data.order }}",
        "{{ data.order.total }}",
        "{{ data.order.lines }}",
        "{{ data.flag }}",
        "{{ data.none }}",
        "{{ data.none.x }}",
        "{{ data.s }}",
        "{{ data.user.id }}",
        "{{ data.missing }}",
        "{{ data.missing.x }}",
        "{{ data.order.id.x }}",
        "{{- user.id }}",
        "{{ user.id -}}",
        "{{ user . id }}",
        "{{ user.if }}",
        "{{ user }}",
        "{{ data }}",
        "{{ count }}",
        "{{ user.n + 1 }}",
        "{{ user.tier|upper }}",
        "{{ user['tier'] }}",
        "{{ data.order.lines.0 }}",
        "{% if user.yes %}y{% endif %}",
        "{# note #}",
        "{{ \"}}\" }}",
        "{{{ user.id }}}",
    ];

    /// Compares the direct path with the VM on `text` for every user and data; how many
    /// renders the direct path made.
    fn compare(text: &str) -> std::result::Result<usize, TestCaseError> {
        let content = TemplateContent {
            in_app: Some(TitleBody {
                title: text.to_owned(),
                body: "b".into(),
            }),
            ..Default::default()
        };
        let Ok(compiled) = Compiled::new(content) else {
            return Ok(0);
        };
        let Some((_, direct)) = compiled.substitutions.first() else {
            return Ok(0);
        };
        let mut compared = 0;
        for user in users() {
            for data in data() {
                let ctx = context(&user, &data_value(&data));
                if let Some(out) = direct.render(&ctx) {
                    prop_assert_eq!(
                        Ok(out),
                        through_vm(&compiled, "in_app.title", &ctx).map_err(|e| e.message),
                        "{:?}",
                        text
                    );
                    compared += 1;
                }
            }
        }
        Ok(compared)
    }

    #[test]
    fn every_pair_of_pieces_renders_without_the_vm_as_with_it() {
        let mut compared = 0;
        for a in PIECES {
            for b in PIECES {
                compared += compare(&format!("{a}{b}")).unwrap();
            }
        }
        // Most pairs are plain text and lookups: the comparison is not vacuous.
        assert!(compared > 5_000, "{compared}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the text, a field the direct path renders comes out as the VM renders it,
        /// for users and data of every kind of value.
        #[test]
        fn a_field_rendered_without_the_vm_is_what_the_vm_renders(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 1..8)
        ) {
            compare(&pieces.concat())?;
        }
    }

    #[test]
    fn plain_placeholders_render_without_the_vm_and_the_rest_through_it() {
        let direct = |text: &str| Substitutions::parse(text).is_some();
        assert!(direct("Hello {{ user.id }}"));
        assert!(direct(
            "{{user.name}}, order {{ data.order.id }} is on its way\n"
        ));
        assert!(direct("no placeholder { } }} at all"));
        for text in [
            "{{ user.name|upper }}",
            "{% if user.vip %}VIP{% endif %}",
            "{# a comment #}{{ user.id }}",
            "{{- user.id }}",
            "{{ user }}",
            "{{ count }}",
            "{{ user['name'] }}",
            "{{ data.lines.0 }}",
            "{{ user.id",
        ] {
            assert!(!direct(text), "{text}");
        }

        let user = &users()[0];
        let data = serde_json::json!({"order": {"id": 42}});
        let ctx = context(user, &data_value(&data));
        let sub = Substitutions::parse(
            "{{ user.id }}/{{ user.tier }}/{{ data.order.id }}/{{ user.missing }}.",
        )
        .unwrap();
        assert_eq!(sub.render(&ctx).as_deref(), Some("u-1/gold/42/."));
        // A lookup the VM fails (an attribute of an undefined value) is left to it.
        let sub = Substitutions::parse("{{ data.missing.x }}").unwrap();
        assert_eq!(sub.render(&ctx), None);
        // So is output over the limit: the VM names it.
        let mut huge = User::nameless("h");
        huge.attributes
            .insert("s".into(), "x".repeat(MAX_FIELD_OUTPUT + 1).into());
        let ctx = context(&Arc::new(huge), &data_value(&data));
        assert_eq!(
            Substitutions::parse("{{ user.s }}").unwrap().render(&ctx),
            None
        );
        let c = Compiled::new(TemplateContent {
            in_app: Some(TitleBody {
                title: "{{ user.s }}".into(),
                body: "b".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        let err = c.render("in_app.title", "{{ user.s }}", &ctx).unwrap_err();
        assert!(err.message.contains("renders more than"), "{}", err.message);
    }

    #[test]
    fn an_html_field_is_escaped_by_the_vm_not_copied() {
        let c = Compiled::new(TemplateContent {
            email: Some(crate::model::EmailContent {
                subject: "{{ user.html }}".into(),
                text: "{{ user.html }}".into(),
                html: Some("<p>{{ user.html }}</p>".into()),
            }),
            ..Default::default()
        })
        .unwrap();
        let names: Vec<&str> = c.substitutions.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["email.subject", "email.text"]);
        let ctx = context(&users()[0], &data_value(&serde_json::json!({})));
        assert_eq!(
            c.render("email.html", "<p>{{ user.html }}</p>", &ctx)
                .unwrap(),
            "<p>&lt;b&gt;&amp;&#x27;&quot;</p>"
        );
        assert_eq!(
            c.render("email.text", "{{ user.html }}", &ctx).unwrap(),
            "<b>&'\""
        );
    }
}

#[cfg(test)]
mod compiled_tests {
    use super::*;
    use crate::model::*;
    use chrono::Utc;

    #[test]
    fn a_locale_picks_its_variant_per_channel_along_the_tag_then_the_default() {
        let tb = |t: &str| {
            Some(TitleBody {
                title: t.into(),
                body: format!("{t} {{{{ user.id }}}}"),
            })
        };
        let variant = |in_app: Option<TitleBody>, push: Option<TitleBody>| TemplateContent {
            in_app,
            push,
            ..Default::default()
        };
        let c = Compiled::new(TemplateContent {
            in_app: tb("en-inbox"),
            push: tb("en-push"),
            locales: [
                ("pt".to_owned(), variant(tb("pt-inbox"), tb("pt-push"))),
                ("pt-BR".to_owned(), variant(None, tb("br-push"))),
                ("fr".to_owned(), variant(tb("fr-inbox"), None)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .unwrap();
        let titles = |locale: Option<&str>| {
            let v = c.for_locale(locale).content();
            (
                v.in_app.as_ref().unwrap().title.clone(),
                v.push.as_ref().unwrap().title.clone(),
            )
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(titles(None), pair("en-inbox", "en-push"));
        assert_eq!(titles(Some("de")), pair("en-inbox", "en-push"));
        assert_eq!(titles(Some("pt")), pair("pt-inbox", "pt-push"));
        // pt-BR has push only: its inbox text falls back to pt's, not the default's.
        assert_eq!(titles(Some("pt-BR")), pair("pt-inbox", "br-push"));
        assert_eq!(titles(Some("pt_br")), pair("pt-inbox", "br-push"));
        assert_eq!(titles(Some("PT-br-x-private")), pair("pt-inbox", "br-push"));
        assert_eq!(titles(Some("pt-PT")), pair("pt-inbox", "pt-push"));
        assert_eq!(titles(Some("fr-CA")), pair("fr-inbox", "en-push"));
        // The variant's placeholders render like the default's.
        let v = c.for_locale(Some("pt-BR"));
        let ctx = minijinja::Value::from_serialize(serde_json::json!({"user": {"id": "ana"}}));
        let push = v.content().push.clone().unwrap();
        assert_eq!(
            v.render("push.body", &push.body, &ctx).unwrap(),
            "br-push ana"
        );
    }

    #[test]
    fn compiled_content_renders_per_user_and_copies_plain_fields() {
        let c = Compiled::new(TemplateContent {
            push: Some(TitleBody {
                title: "Plain title".into(),
                body: "Hi {{ user.id }}, order {{ data.n }}".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        let ctx = minijinja::Value::from_serialize(
            serde_json::json!({"user": {"id": "u7"}, "data": {"n": 3}}),
        );
        let push = c.content().push.clone().unwrap();
        assert_eq!(
            c.render("push.title", &push.title, &ctx).unwrap(),
            "Plain title"
        );
        assert_eq!(
            c.render("push.body", &push.body, &ctx).unwrap(),
            "Hi u7, order 3"
        );
        assert!(Compiled::inline("{{ broken", "b").is_err());
    }

    fn user_ctx(id: &str, data: &minijinja::Value) -> minijinja::Value {
        let user = Arc::new(User {
            id: id.into(),
            email: None,
            phone: None,
            attributes: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        });
        context(&user, data)
    }

    #[test]
    fn a_field_that_reads_no_user_renders_once_per_memo_and_the_others_per_user() {
        let c = Compiled::new(TemplateContent {
            in_app: Some(TitleBody {
                title: "Run {{ data.run }}{% for i in range(2) %}.{% endfor %}".into(),
                body: "Hello {{ user.id }}".into(),
            }),
            // Reads the body (and so the user) through an include: rendered per user.
            push: Some(TitleBody {
                title: "{% include 'in_app.body' %}".into(),
                body: "{{ data.run|upper }}".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.shared, ["in_app.title", "push.body"]);
        let data = data_value(&serde_json::json!({"run": "r1"}));
        let mut memo = Memo::default();
        let nid = uuid::Uuid::nil();
        for id in ["ana", "bo"] {
            let ctx = user_ctx(id, &data);
            let (title, body) = render_in_app(&c, &ctx, &mut memo).unwrap();
            assert_eq!(
                (title.as_str(), body.as_str()),
                ("Run r1..", &*format!("Hello {id}"))
            );
            let user = User::nameless(id);
            let item = render_item(Channel::Push, &c, &user, nid, &Value::Null, &ctx, &mut memo)
                .unwrap()
                .unwrap();
            assert_eq!(item.title.as_deref(), Some(&*format!("Hello {id}")));
            assert_eq!(item.body, "R1");
        }
        // The shared fields were rendered once each and kept.
        assert_eq!(memo.done.len(), 2);
    }

    #[test]
    fn a_field_that_reads_user_where_the_name_analysis_does_not_look_renders_per_user() {
        let data = data_value(&serde_json::json!({}));
        for text in [
            "{% set user = user.id %}Hi {{ user }}",
            "{% with user = user.id %}Hi {{ user }}{% endwith %}",
            "{% filter replace('NAME', user.id) %}Hi NAME{% endfilter %}",
            "{% set x | replace('a', user.id) %}a{% endset %}Hi {{ x }}",
            "{% macro m(u=user) %}{{ u.id }}{% endmacro %}Hi {{ m() }}",
        ] {
            let c = Compiled::inline(text, "b").unwrap();
            assert!(c.shared.is_empty(), "{text}");
            let mut memo = Memo::default();
            for id in ["ana", "bo"] {
                let (title, _) = render_in_app(&c, &user_ctx(id, &data), &mut memo).unwrap();
                assert_eq!(title, format!("Hi {id}"), "{text}");
            }
        }
    }

    #[test]
    fn a_shared_field_that_fails_fails_every_user_of_the_memo() {
        let c = Compiled::inline("{{ data.s * 100000000 }}", "Hi {{ user.id }}").unwrap();
        let data = data_value(&serde_json::json!({"s": "xx"}));
        let mut memo = Memo::default();
        for id in ["ana", "bo"] {
            let err = render_in_app(&c, &user_ctx(id, &data), &mut memo).unwrap_err();
            assert!(err.message.contains("in_app.title"), "{}", err.message);
        }
    }

    fn push(body: &str) -> Compiled {
        Compiled::new(TemplateContent {
            push: Some(TitleBody {
                title: "t".into(),
                body: body.into(),
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn data_ctx(data: serde_json::Value) -> minijinja::Value {
        minijinja::Value::from_serialize(serde_json::json!({"user": {"id": "u"}, "data": data}))
    }

    #[test]
    fn templates_that_exceed_a_limit_whatever_the_data_are_refused_with_the_limit_named() {
        let loops = push(
            "{% for a in range(1000) %}{% for b in range(1000) %}{{ a }}{% endfor %}{% endfor %}",
        );
        let err = loops.check_limits().unwrap_err();
        assert!(
            err.message.contains("template instructions"),
            "{}",
            err.message
        );

        let huge = push(r#"{{ "x" * 100000000 }}"#);
        let err = huge.check_limits().unwrap_err();
        assert!(
            err.message.contains("renders more than 131072 bytes"),
            "{}",
            err.message
        );

        let deep = push(
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(10000) }}",
        );
        let err = deep.check_limits().unwrap_err();
        assert!(
            err.message.contains("levels") || err.message.contains("instructions"),
            "{}",
            err.message
        );

        // Data-dependent failures are left to the render (and so to the recipient).
        let divides = push("{{ 10 / data.n }}");
        assert!(divides.check_limits().is_ok());
        assert!(push("Hello {{ user.id }}").check_limits().is_ok());
    }

    /// A repeated sequence is lazy, and iterating it happens outside the fuel's count: with
    /// minijinja as published, each of these renders for ever (the template fuzz target found
    /// the last one). Herald's minijinja (vendor/minijinja/HERALD.md) refuses the repeat.
    #[test]
    fn a_repeated_sequence_is_refused_however_it_is_used_and_renders_end_at_once() {
        let fuzzed = String::from_utf8_lossy(include_bytes!(
            "../../fuzz/corpus/template/regression-sequence-repeat"
        ))
        .into_owned();
        let cases: Vec<String> = vec![
            "{{ [1] * 1000000000000000000 }}".into(),
            "{{ ([1] * 1000000000000000000)|join }}".into(),
            "{{ 2 in [1] * 1000000000000000000 }}".into(),
            "{{ [[1] * 1000] * 1000 }}".into(),
            "{{ data.list * 1000000000000000000 }}".into(),
            r#"{{ "abc"|list * 3 }}"#.into(),
            fuzzed,
        ];
        for text in cases {
            let (tx, rx) = std::sync::mpsc::channel();
            let body = text.clone();
            std::thread::spawn(move || {
                let Ok(c) = Compiled::new(TemplateContent {
                    push: Some(TitleBody {
                        title: "t".into(),
                        body: body.clone(),
                    }),
                    ..Default::default()
                }) else {
                    let _ = tx.send(None);
                    return;
                };
                let limits = c.check_limits();
                // The fuzz target's context.
                let ctx = minijinja::Value::from_serialize(serde_json::json!({
                    "user": {"id": "u1", "n": 7, "name": "<b>x</b>"},
                    "data": {"list": [1, 2, 3], "s": "abc"},
                }));
                let rendered = c.render("push.body", &body, &ctx);
                let _ = tx.send(Some((limits, rendered)));
            });
            let outcome = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("rendering {text:?} did not end within 10 s"));
            if let Some((_, rendered)) = outcome {
                let err = rendered.expect_err(&text);
                assert!(
                    err.message.contains("too large"),
                    "{text:?}: {}",
                    err.message
                );
            }
        }
        // Repeating a string stays, within the output limit; numbers still multiply.
        assert_eq!(
            push(r#"{{ "ab" * 3 }} {{ 6 * 7 }}"#)
                .render(
                    "push.body",
                    r#"{{ "ab" * 3 }} {{ 6 * 7 }}"#,
                    &data_ctx(serde_json::json!({}))
                )
                .unwrap(),
            "ababab 42"
        );
        // Refused when stored, since it fails whatever the data.
        assert!(push("{{ [1] * 3 }}").check_limits().is_err());
    }

    #[test]
    fn a_render_that_exceeds_a_limit_for_some_data_fails_for_that_data_only() {
        let c = push(r#"{{ "ab" * data.n }}"#);
        let body = c.content().push.clone().unwrap().body;
        assert_eq!(
            c.render("push.body", &body, &data_ctx(serde_json::json!({"n": 3})))
                .unwrap(),
            "ababab"
        );
        let err = c
            .render(
                "push.body",
                &body,
                &data_ctx(serde_json::json!({"n": 1_000_000})),
            )
            .unwrap_err();
        assert!(
            err.message
                .starts_with("push.body: template renders more than"),
            "{}",
            err.message
        );
        let err = c
            .render("push.body", &body, &data_ctx(serde_json::json!({"n": "x"})))
            .unwrap_err();
        assert!(err.message.contains("does not render"), "{}", err.message);
    }

    #[test]
    fn html_email_escapes_inserted_values_and_text_fields_do_not() {
        let c = Compiled::new(TemplateContent {
            email: Some(EmailContent {
                subject: "Hi {{ user.name }}".into(),
                text: "Hi {{ user.name }}".into(),
                html: Some("<p>Hi {{ user.name }}</p>".into()),
            }),
            ..Default::default()
        })
        .unwrap();
        let ctx = minijinja::Value::from_serialize(
            serde_json::json!({"user": {"name": "<script>alert(1)</script>"}, "data": {}}),
        );
        let email = c.content().email.clone().unwrap();
        let html = c
            .render("email.html", email.html.as_deref().unwrap(), &ctx)
            .unwrap();
        assert_eq!(html, "<p>Hi &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p>");
        assert_eq!(
            c.render("email.text", &email.text, &ctx).unwrap(),
            "Hi <script>alert(1)</script>"
        );
    }

    #[test]
    fn a_template_reads_the_attributes_named_after_user_dot_and_all_of_them_otherwise() {
        let only = |names: &[&str]| AttributeKeys::none().with(names);
        for (text, keys) in [
            (
                "Hi {{ user.name }} ({{ user . tier|upper }})",
                only(&["name", "tier"]),
            ),
            (
                "{% if user.vip %}{{ user.id }}{% endif %}{{ superuser }}{{ users }}",
                only(&["vip"]),
            ),
            ("Hello {{ user.id }}", only(&[])),
            (
                "{{ user.email }} {{ user.phone }}",
                only(&["email", "phone"]),
            ),
            ("{{ data.user.x }} {{ data.run }}", only(&["x"])),
            ("{{ data.run }}", only(&[])),
            ("{{ user }}", AttributeKeys::All),
            ("{{ user['tier'] }}", AttributeKeys::All),
            (
                "{% for k, v in user|items %}{{ k }}{% endfor %}",
                AttributeKeys::All,
            ),
            ("{% set u = user %}{{ u.tier }}", AttributeKeys::All),
            (
                "{% macro m(u=user) %}{{ u.tier }}{% endmacro %}{{ m() }}",
                AttributeKeys::All,
            ),
            ("{{ user.0 }}", AttributeKeys::All),
            ("{{ user.n\u{e4}me }}", AttributeKeys::All),
            ("{% include 'in_app.body' %}", AttributeKeys::All),
            ("{{ debug() }}", AttributeKeys::All),
            ("{# about the user #}{{ data.x }}", AttributeKeys::All),
        ] {
            assert_eq!(user_keys_read(text), keys, "{text}");
        }
        // The content reads what any of its fields and locale variants reads.
        let c = Compiled::new(TemplateContent {
            in_app: Some(TitleBody {
                title: "{{ user.name }}".into(),
                body: "plain".into(),
            }),
            locales: [(
                "pt".to_owned(),
                TemplateContent {
                    push: Some(TitleBody {
                        title: "{{ user.apelido }}".into(),
                        body: "{{ data.x }}".into(),
                    }),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.user_keys(), &only(&["apelido", "name"]));
        assert_eq!(Compiled::inline("a", "b").unwrap().user_keys(), &only(&[]));
    }

    #[test]
    fn a_user_decoded_with_the_attributes_its_template_reads_renders_as_with_all_of_them() {
        let stored = r#"{"name":"Ola","tier":"gold","vip":true,"locale":"pt","score":3.5,"tags":["a","b"],"id":"shadow","phone":"+15550001111"}"#;
        let data = data_value(&serde_json::json!({"run": "r1"}));
        let user_with = |keys: &AttributeKeys| {
            Arc::new(User {
                id: "u1".into(),
                email: Some("u1@example.com".into()),
                phone: None,
                attributes: keys.decode(stored).unwrap(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            })
        };
        for text in [
            "Hi {{ user.name }}, {{ user.tier|upper }} {{ user.email }} {{ user.phone }}",
            "{% if user.vip %}VIP{% endif %} {{ user.tags|join(',') }} {{ user.missing }}",
            "{% for k, v in user|items %}{{ k }}={{ v }};{% endfor %}",
            "{{ user|length }} {{ user['score'] }} {{ user }}",
            "{% set u = user %}{{ u|length }} {{ u.tier }} {{ u.score }}",
            "{{ data.run }} only",
            // The id is the user's own whatever the attributes hold; an unset phone falls
            // back to the attribute.
            "Hello {{ user.id }} {{ user.phone }}",
        ] {
            let c = Compiled::inline(text, "b").unwrap();
            let keys = c.user_keys().clone();
            let all = user_with(&AttributeKeys::All);
            let some = user_with(&keys);
            let full = render_in_app(&c, &context(&all, &data), &mut Memo::default()).unwrap();
            let partial = render_in_app(&c, &context(&some, &data), &mut Memo::default()).unwrap();
            assert_eq!(partial, full, "{text} read with {keys:?}");
        }
    }
}
