//! The domain types: users and what hangs off them (preferences, devices), segments, templates,
//! campaigns, personal notifications, broadcasts, bus messages and live events.
//!
//! These are the shapes stored by the ports and, where they are client-facing, serialised
//! as-is by the HTTP layer, so field names follow `../shared/API.md`.

use crate::filter::Filter;
use crate::{Error, Result};
use chrono::{DateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Free-form user attributes (`tier`, `locale`, `timezone`, ...).
pub type Attributes = Map<String, Value>;

/// Which of the users' attributes a read decodes. The fan-out reads a thousand users per batch
/// and renders templates that name one or two of their attributes (`{{ user.name }}`): decoding
/// every attribute of every user into maps it throws away was a tenth of its CPU. With
/// [`AttributeKeys::Only`] a store skips the other attributes while it reads the stored JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AttributeKeys {
    /// Every attribute.
    #[default]
    All,
    /// These attributes (those the user has); the others are left out.
    Only(std::collections::BTreeSet<String>),
}

impl AttributeKeys {
    /// No attribute at all.
    pub fn none() -> AttributeKeys {
        AttributeKeys::Only(Default::default())
    }

    /// The attributes either of the two keeps.
    pub fn union(self, other: AttributeKeys) -> AttributeKeys {
        match (self, other) {
            (AttributeKeys::Only(mut a), AttributeKeys::Only(b)) => {
                a.extend(b);
                AttributeKeys::Only(a)
            }
            _ => AttributeKeys::All,
        }
    }

    /// These and `names` too.
    pub fn with(self, names: &[&str]) -> AttributeKeys {
        self.union(AttributeKeys::Only(
            names.iter().map(|n| (*n).to_owned()).collect(),
        ))
    }

    pub fn keeps(&self, name: &str) -> bool {
        match self {
            AttributeKeys::All => true,
            AttributeKeys::Only(names) => names.contains(name),
        }
    }

    /// Stored attributes (a JSON object) decoded, the ones not kept skipped unread. Keeping
    /// none reads nothing: the text is not looked at (Herald wrote it; a read that keeps
    /// attributes still refuses a corrupt one). An in-app fan-out whose templates name no
    /// attribute reads its million users' rows without parsing one.
    pub fn decode(&self, json: &str) -> serde_json::Result<Attributes> {
        let AttributeKeys::Only(names) = self else {
            return serde_json::from_str(json);
        };
        if names.is_empty() {
            return Ok(Attributes::new());
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let attributes = serde::de::DeserializeSeed::deserialize(Keeping(names), &mut de)?;
        de.end()?;
        Ok(attributes)
    }

    /// `attributes` without the ones not kept.
    pub fn retain(&self, attributes: &mut Attributes) {
        attributes.retain(|k, _| self.keeps(k));
    }
}

/// Decodes a JSON object into [`Attributes`], keeping the named members only.
struct Keeping<'k>(&'k std::collections::BTreeSet<String>);

impl<'de> serde::de::DeserializeSeed<'de> for Keeping<'_> {
    type Value = Attributes;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Attributes, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Keeping<'_> {
    type Value = Attributes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of attributes")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Attributes, A::Error> {
        let mut out = Attributes::new();
        // Names are borrowed from the input unless they hold escapes.
        while let Some(name) = map.next_key::<Name<'de>>()? {
            if self.0.contains(name.0.as_ref()) {
                out.insert(name.0.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Channels and priorities

/// A delivery channel.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    InApp,
    Push,
    Email,
    Sms,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::InApp,
        Channel::Push,
        Channel::Email,
        Channel::Sms,
        Channel::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Push => "push",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown channel `{s}`; expected one of in_app, push, email, sms, webhook"
                ))
            })
    }
}

/// How urgent a notification is; high and urgent ones go through quiet hours.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Whether a notification of this priority is delivered during quiet hours.
    pub fn bypasses_quiet_hours(self) -> bool {
        matches!(self, Priority::High | Priority::Urgent)
    }
}

/// When a campaign's push goes out: to everyone, or only to who is not looking at the inbox
/// (presence-aware push).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushWhen {
    /// To every recipient with a device (the default).
    #[default]
    Always,
    /// Only to recipients with no live inbox socket when the batch is published. Recipients
    /// with one are counted `suppressed_online`, unless `online_push_delay_s` is set: then
    /// their push waits that long and goes out only if the item is still unread (and not
    /// dismissed) by then.
    Offline,
}

impl PushWhen {
    pub fn is_always(&self) -> bool {
        *self == PushWhen::Always
    }
}

/// Longest `online_push_delay_s`: a day.
pub const MAX_ONLINE_PUSH_DELAY_S: u32 = 86_400;

/// Checks a presence-aware push setting against the channels it goes with.
pub fn validate_push_when(
    channels: &[Channel],
    when: PushWhen,
    online_delay_s: Option<u32>,
) -> crate::Result<()> {
    match (when, online_delay_s) {
        (PushWhen::Always, None) => Ok(()),
        (PushWhen::Always, Some(_)) => Err(crate::Error::invalid(
            "online_push_delay_s: only with push_when \"offline\"",
        )),
        (PushWhen::Offline, delay) => {
            if !(channels.contains(&Channel::Push) && channels.contains(&Channel::InApp)) {
                return Err(crate::Error::invalid(
                    "push_when \"offline\": the channels must include push and in_app (presence is a live inbox socket)",
                ));
            }
            match delay {
                Some(d) if d == 0 || d > MAX_ONLINE_PUSH_DELAY_S => Err(crate::Error::invalid(
                    format!("online_push_delay_s: from 1 to {MAX_ONLINE_PUSH_DELAY_S} seconds"),
                )),
                _ => Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Users

/// A user of the client application, as the directory stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object, additional_properties)]
    pub attributes: Attributes,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// A user the directory does not know: an id and nothing else (campaigns to named users
    /// reach ids that were never imported; they get what needs no address).
    pub fn nameless(id: &str) -> User {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        User {
            id: id.to_owned(),
            email: None,
            phone: None,
            attributes: Default::default(),
            created_at: epoch,
            updated_at: epoch,
        }
    }

    /// The user's `locale` attribute (a language tag such as `pt-BR`), if set.
    pub fn locale(&self) -> Option<&str> {
        self.attributes.get("locale").and_then(Value::as_str)
    }

    /// The IANA time zone of the user's `timezone` attribute, if set and known.
    pub fn timezone(&self) -> Option<chrono_tz::Tz> {
        self.attributes
            .get("timezone")
            .and_then(Value::as_str)
            .and_then(|tz| tz.parse().ok())
    }
}

/// Limits on what one user record may hold, so a single bad client cannot bloat every row.
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTES_BYTES: usize = 8 * 1024;

/// Checks the client-supplied parts of a user (id, contact fields, attributes).
pub fn validate_user_fields(
    id: &str,
    email: Option<&str>,
    phone: Option<&str>,
    attributes: &Attributes,
) -> Result<()> {
    crate::ids::validate_key("user id", id)?;
    if let Some(email) = email {
        let at = email.find('@');
        // Control characters (CR, LF, NUL...) and spaces would reach SMTP commands and
        // headers: an address has none.
        let clean = !email.chars().any(|c| c.is_control() || c.is_whitespace());
        if email.len() > 254 || !clean || at.is_none_or(|i| i == 0 || i + 1 == email.len()) {
            return Err(Error::invalid(format!(
                "user `{id}`: email must look like name@domain, without spaces or control \
                 characters"
            )));
        }
    }
    if let Some(phone) = phone {
        let digits = phone.trim_start_matches('+');
        if phone.len() > 32
            || digits.is_empty()
            || !digits
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        {
            return Err(Error::invalid(format!(
                "user `{id}`: phone must be digits, optionally starting with +"
            )));
        }
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "user `{id}`: at most {MAX_ATTRIBUTES} attributes"
        )));
    }
    for (key, value) in attributes {
        if key.is_empty() || key.len() > 64 {
            return Err(Error::invalid(format!(
                "user `{id}`: attribute names must be 1 to 64 characters"
            )));
        }
        if matches!(value, Value::Object(_)) {
            return Err(Error::invalid(format!(
                "user `{id}`: attribute `{key}` must be a string, number, boolean, array or null"
            )));
        }
    }
    if let Some(Value::String(tz)) = attributes.get("timezone") {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            return Err(Error::invalid(format!(
                "user `{id}`: unknown time zone `{tz}` (use an IANA name like Europe/Paris)"
            )));
        }
    }
    let size = serde_json::to_vec(attributes).map(|v| v.len()).unwrap_or(0);
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(Error::invalid(format!(
            "user `{id}`: attributes take {size} bytes, at most {MAX_ATTRIBUTES_BYTES}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Preferences

/// A user's delivery preferences. Anything not mentioned is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Channel switches: `{"email": false}` turns email off for every category.
    #[serde(default)]
    pub channels: BTreeMap<Channel, bool>,
    /// Per-category channel switches: `{"marketing": {"email": false}}`.
    #[serde(default)]
    pub categories: BTreeMap<String, BTreeMap<Channel, bool>>,
    /// A daily window, in the user's time zone, in which low and normal priority
    /// notifications are held back until it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

impl Preferences {
    /// Whether this user accepts `channel` for `category`. The category switch, when present,
    /// wins over the channel switch, so "no email, except for security" can be expressed.
    pub fn allows(&self, channel: Channel, category: Option<&str>) -> bool {
        if let Some(switch) = category
            .and_then(|c| self.categories.get(c))
            .and_then(|per| per.get(&channel))
        {
            return *switch;
        }
        self.channels.get(&channel).copied().unwrap_or(true)
    }

    pub fn validate(&self) -> Result<()> {
        if self.categories.len() > 256 {
            return Err(Error::invalid("preferences: at most 256 categories"));
        }
        for name in self.categories.keys() {
            validate_category(name)?;
        }
        Ok(())
    }
}

/// Category names are short identifiers such as `marketing` or `security`.
pub fn validate_category(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "category `{name}` must be 1 to 64 letters, digits, _ - or ."
        )))
    }
}

/// A daily quiet window such as 22:00–07:00 (it may wrap past midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuietHours {
    #[serde(with = "hhmm")]
    #[schema(value_type = String, pattern = "^[0-2][0-9]:[0-5][0-9]$", example = "22:00")]
    pub start: NaiveTime,
    #[serde(with = "hhmm")]
    #[schema(value_type = String, pattern = "^[0-2][0-9]:[0-5][0-9]$", example = "07:00")]
    pub end: NaiveTime,
}

impl QuietHours {
    /// If `now` falls inside the window in time zone `tz`, the instant the window ends.
    pub fn ends_after(&self, now: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        use chrono::{Days, TimeZone};
        if self.start == self.end {
            return None;
        }
        let local = now.with_timezone(&tz);
        let t = local.time();
        let inside = if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        };
        if !inside {
            return None;
        }
        let mut day = local.date_naive();
        if t >= self.end {
            day = day.checked_add_days(Days::new(1))?;
        }
        // A DST gap can swallow the end time; an ambiguous one takes the earlier instant.
        let end = tz
            .from_local_datetime(&day.and_time(self.end))
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(day.and_time(self.end) + chrono::Duration::hours(1)))
                    .earliest()
            })?;
        Some(end.with_timezone(&Utc))
    }
}

mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map_err(|_| serde::de::Error::custom(format!("quiet hours time `{s}` must be HH:MM")))
    }
}

// ---------------------------------------------------------------------------------------------
// Devices

/// A push provider family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Fcm,
    Apns,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Fcm => "fcm",
            Platform::Apns => "apns",
            Platform::Web => "web",
        }
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fcm" => Ok(Platform::Fcm),
            "apns" => Ok(Platform::Apns),
            "web" => Ok(Platform::Web),
            _ => Err(Error::invalid(format!(
                "unknown platform `{s}`; expected fcm, apns or web"
            ))),
        }
    }
}

/// A push token registered for a user. A token belongs to at most one user: registering it
/// again for another user moves it (the device changed hands or accounts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub user_id: String,
    pub platform: Platform,
    pub token: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

pub fn validate_device_token(token: &str) -> Result<()> {
    if token.is_empty() || token.len() > 4096 || token.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "device token must be 1 to 4096 printable characters",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Segments and templates

/// A named audience, defined by a filter over user attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    pub name: String,
    #[schema(schema_with = crate::filter::filter_schema)]
    pub filter: Filter,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Title and body, for the in-app and push channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TitleBody {
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsContent {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookContent {
    pub body: String,
}

/// What a template says per channel; each field holds `{{ user.x }}` / `{{ data.y }}` placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app: Option<TitleBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<TitleBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookContent>,
    /// Variants per locale, keyed by BCP 47 tag (`pt-BR`, `pt`, `fr`): a user whose `locale`
    /// attribute names one gets its text, per channel, falling back along the tag
    /// (`pt-BR` → `pt`) and then to the content above. A variant holds channels of the content
    /// above only, and no variants of its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(no_recursion)]
    pub locales: BTreeMap<String, TemplateContent>,
}

/// Variants a template may hold at most.
pub const MAX_LOCALES: usize = 64;

/// Whether `tag` is a well-formed language tag as far as Herald needs: a language of 2–3
/// letters, then subtags of 1–8 letters or digits, `-` between them, 35 characters at most.
pub fn is_locale_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let lang = parts.next().unwrap_or("");
    tag.len() <= 35
        && (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl TemplateContent {
    /// The channels this content has text for.
    pub fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        if self.in_app.is_some() {
            out.push(Channel::InApp);
        }
        if self.push.is_some() {
            out.push(Channel::Push);
        }
        if self.email.is_some() {
            out.push(Channel::Email);
        }
        if self.sms.is_some() {
            out.push(Channel::Sms);
        }
        if self.webhook.is_some() {
            out.push(Channel::Webhook);
        }
        out
    }

    /// Every text field with a dotted name, for validation and rendering.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut out: Vec<(&'static str, &str)> = Vec::new();
        if let Some(c) = &self.in_app {
            out.push(("in_app.title", &c.title));
            out.push(("in_app.body", &c.body));
        }
        if let Some(c) = &self.push {
            out.push(("push.title", &c.title));
            out.push(("push.body", &c.body));
        }
        if let Some(c) = &self.email {
            out.push(("email.subject", &c.subject));
            out.push(("email.text", &c.text));
            if let Some(html) = &c.html {
                out.push(("email.html", html));
            }
        }
        if let Some(c) = &self.sms {
            out.push(("sms.text", &c.text));
        }
        if let Some(c) = &self.webhook {
            out.push(("webhook.body", &c.body));
        }
        out
    }

    /// Rejects empty content, oversized fields and placeholders that do not compile, in the
    /// content and in each locale variant.
    pub fn validate(&self) -> Result<()> {
        self.validate_fields("")?;
        if self.locales.len() > MAX_LOCALES {
            return Err(Error::invalid(format!(
                "locales: at most {MAX_LOCALES} variants"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let channels = self.channels();
        for (tag, variant) in &self.locales {
            if !is_locale_tag(tag) {
                return Err(Error::invalid(format!(
                    "locales: `{tag}` is not a language tag (like `pt-BR`, `pt` or `fr`)"
                )));
            }
            if !seen.insert(tag.to_ascii_lowercase()) {
                return Err(Error::invalid(format!(
                    "locales: `{tag}` is given twice (tags are matched without case)"
                )));
            }
            if !variant.locales.is_empty() {
                return Err(Error::invalid(format!(
                    "locales.{tag}: a variant has no variants of its own"
                )));
            }
            if let Some(extra) = variant
                .channels()
                .into_iter()
                .find(|c| !channels.contains(c))
            {
                return Err(Error::invalid(format!(
                    "locales.{tag}: has {extra} content the template itself lacks (users of \
                     other locales would have none)"
                )));
            }
            variant.validate_fields(&format!("locales.{tag}."))?;
        }
        crate::template::Compiled::new(self.clone())?.check_limits()
    }

    fn validate_fields(&self, prefix: &str) -> Result<()> {
        let fields = self.fields();
        if fields.is_empty() {
            return Err(Error::invalid(
                "template needs content for at least one channel (in_app, push, email, sms, webhook)",
            ));
        }
        for (name, text) in fields {
            if text.len() > 64 * 1024 {
                return Err(Error::invalid(format!(
                    "{prefix}{name} is longer than 64 KiB"
                )));
            }
            crate::template::check(&format!("{prefix}{name}"), text)?;
        }
        Ok(())
    }

    /// This content with the channels `variant` has replaced by the variant's.
    pub fn overlaid(&self, variant: &TemplateContent) -> TemplateContent {
        TemplateContent {
            in_app: variant.in_app.clone().or_else(|| self.in_app.clone()),
            push: variant.push.clone().or_else(|| self.push.clone()),
            email: variant.email.clone().or_else(|| self.email.clone()),
            sms: variant.sms.clone().or_else(|| self.sms.clone()),
            webhook: variant.webhook.clone().or_else(|| self.webhook.clone()),
            locales: BTreeMap::new(),
        }
    }
}

/// A stored, reusable template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    #[serde(flatten)]
    pub content: TemplateContent,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// Campaigns

/// Who a campaign is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    User(String),
    Users(Vec<String>),
    Segment(String),
    All(bool),
}

/// How a campaign reaches its audience (seed 004's decision matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Direct,
    Batch,
    Throttled,
    Broadcast,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Batch => "batch",
            Strategy::Throttled => "throttled",
            Strategy::Broadcast => "broadcast",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Scheduled,
    Sizing,
    FanningOut,
    Active,
    Completed,
    Cancelled,
    Failed,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 7] = [
        CampaignStatus::Scheduled,
        CampaignStatus::Sizing,
        CampaignStatus::FanningOut,
        CampaignStatus::Active,
        CampaignStatus::Completed,
        CampaignStatus::Cancelled,
        CampaignStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Sizing => "sizing",
            CampaignStatus::FanningOut => "fanning_out",
            CampaignStatus::Active => "active",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Cancelled => "cancelled",
            CampaignStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignStatus::Completed | CampaignStatus::Cancelled | CampaignStatus::Failed
        )
    }
}

impl FromStr for CampaignStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CampaignStatus::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown campaign status `{s}`")))
    }
}

/// What a campaign sends: a stored template or inline content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignContent {
    Template(String),
    Inline(TitleBody),
}

/// Fan-out counters of a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub batches_total: u64,
    pub batches_done: u64,
    pub notifications_written: u64,
    pub skipped_opted_out: u64,
    pub deferred_quiet_hours: u64,
    /// Recipients skipped because their content did not render (a limit, or an error their
    /// data caused); a sample of the reasons is kept with the campaign.
    #[serde(default)]
    pub failed_render: u64,
    /// Batches given up after `fanout.max_batch_attempts` failed attempts (their users got
    /// nothing); counted done so the campaign still ends.
    #[serde(default)]
    pub failed_batches: u64,
}

/// A batch given up after its attempts, kept whole so it can be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedBatch {
    pub campaign_id: String,
    pub batch_no: u64,
    pub user_ids: Vec<String>,
    pub reason: String,
    pub failed_at: DateTime<Utc>,
    #[serde(default)]
    pub replayed_at: Option<DateTime<Utc>>,
}

/// A recipient, or a whole batch (`user_id` unset), the fan-out could not serve, and why: the
/// sample of failures kept with a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientFailure {
    pub batch_no: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub reason: String,
}

/// Per-channel delivery counters of a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    /// Pushes not sent because the recipient was looking at the inbox (`push_when:
    /// "offline"`): a live socket when the batch was published, or the item read or
    /// dismissed within `online_push_delay_s`.
    #[serde(default)]
    pub suppressed_online: u64,
    /// Sends not made because the campaign was retracted first.
    #[serde(default)]
    pub cancelled: u64,
}

/// A campaign: one event sent to an audience over some channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    pub audience: Audience,
    pub content: CampaignContent,
    pub channels: Vec<Channel>,
    pub category: Option<String>,
    pub priority: Priority,
    pub data: Value,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub strategy: Strategy,
    /// Presence-aware push ([`PushWhen`]).
    pub push_when: PushWhen,
    /// With `push_when: offline`: how long a recipient with a live socket has to read the
    /// item before the push goes out anyway.
    pub online_push_delay_s: Option<u32>,
    pub status: CampaignStatus,
    pub audience_size: u64,
    pub progress: Progress,
    pub deliveries: BTreeMap<Channel, DeliveryCounts>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the dispatcher is in the audience, so a restarted dispatcher resumes there.
    pub checkpoint: Checkpoint,
}

/// The dispatcher's progress through a campaign's audience.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The number of the next batch to publish.
    pub next_batch: u64,
    /// The last user id of the last published batch (keyset cursor of the audience).
    pub after_user: Option<String>,
    /// Every batch has been published; `progress.batches_total` is final.
    pub batching_done: bool,
}

/// A dispatcher's hold on a campaign (see [`crate::ports::CampaignStore::acquire_lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignLease {
    pub campaign_id: String,
    pub owner: String,
    /// Raised by every acquisition; fenced writes succeed only with the current one.
    pub fence: u64,
    pub until: DateTime<Utc>,
}

impl Campaign {
    /// Whether every batch has been published and processed.
    pub fn all_batches_done(&self) -> bool {
        self.checkpoint.batching_done && self.progress.batches_done >= self.progress.batches_total
    }
}

/// An event-triggered notification: events of `event_type` whose data match `condition`
/// become targeted campaigns with this template, channels and priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rule {
    pub event_type: String,
    pub template: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::filter::filter_schema)]
    pub condition: Option<Filter>,
    /// Presence-aware push for the campaigns the rule makes ([`PushWhen`]).
    #[serde(default, skip_serializing_if = "PushWhen::is_always")]
    pub push_when: PushWhen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_push_delay_s: Option<u32>,
    /// Collect a user's matching events for a window and send one notification for them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestRule>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A rule's digest: a user's events of the rule's type (with the same value of the data field
/// `key`, when set) are collected from the first one for `window_s` seconds, then sent as one
/// notification whose template sees them (`{{ events }}`, the events' data, oldest first, at
/// most [`MAX_DIGEST_EVENTS`]; `{{ count }}`, how many there were).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DigestRule {
    /// A field of the events' data: one digest per value (`order_id`, `project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// 1 to 604800 (a week).
    pub window_s: u32,
}

/// Longest digest window: a week.
pub const MAX_DIGEST_WINDOW_S: u32 = 604_800;
/// Longest digest key value kept as it is (longer ones are kept as their hash).
pub const MAX_DIGEST_KEY_LEN: usize = 128;
/// Events a digest keeps for its template (the count goes on).
pub const MAX_DIGEST_EVENTS: usize = 100;

impl DigestRule {
    pub fn validate(&self) -> crate::Result<()> {
        if self.window_s == 0 || self.window_s > MAX_DIGEST_WINDOW_S {
            return Err(crate::Error::invalid(format!(
                "digest.window_s: from 1 to {MAX_DIGEST_WINDOW_S} seconds"
            )));
        }
        if let Some(key) = &self.key {
            crate::ids::validate_key("digest.key", key)?;
        }
        Ok(())
    }

    /// The digest an event with `data` joins: the value of the key field, as text (empty
    /// without a key, or when the event lacks the field). A value longer than
    /// [`MAX_DIGEST_KEY_LEN`] bytes is kept as its SHA-256 (`sha256:<hex>`), so any value
    /// fits every store's key column.
    pub fn key_value(&self, data: &serde_json::Map<String, Value>) -> String {
        let value = match self.key.as_ref().and_then(|k| data.get(k)) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if value.len() <= MAX_DIGEST_KEY_LEN {
            return value;
        }
        use sha2::{Digest, Sha256};
        let digest: String = Sha256::digest(value.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{digest}")
    }
}

/// One event joining a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestEvent {
    pub event_type: String,
    pub user_id: String,
    /// [`DigestRule::key_value`] of the event.
    pub key_value: String,
    pub data: Value,
    /// The event's identity, when it has one (a CloudEvent's source and id): an event a
    /// digest holds already is not added again.
    pub event_key: Option<String>,
    pub at: DateTime<Utc>,
}

/// Where an event went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DigestAdded {
    pub digest_id: String,
    /// Events in the digest so far.
    pub count: u64,
    /// When it is sent.
    pub window_ends_at: DateTime<Utc>,
    /// The event was in the digest already.
    pub duplicate: bool,
}

/// A digest taken for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenDigest {
    pub id: String,
    pub event_type: String,
    pub user_id: String,
    pub key_value: String,
    /// The events' data, oldest first (at most [`MAX_DIGEST_EVENTS`]).
    pub events: Vec<Value>,
    pub count: u64,
    pub window_ends_at: DateTime<Utc>,
}

/// What an idempotency key maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    /// A hash of the request body, to tell a replay from a conflicting reuse of the key.
    pub request_hash: String,
    /// The id of the resource the key creates, bound when the key is claimed.
    pub resource_id: String,
    /// The first response (status and body) once it is known; `None` while in flight.
    pub response: Option<(u16, Vec<u8>)>,
    pub expires_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// Inbox

/// A personal notification row in a user's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: uuid::Uuid,
    pub user_id: String,
    pub campaign_id: Option<String>,
    pub title: String,
    pub body: String,
    pub category: Option<String>,
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
    /// When the user first saw it in a feed (a read item is seen; so is one under the
    /// user's seen or read watermark).
    #[serde(default)]
    pub seen_at: Option<DateTime<Utc>>,
    /// When the user archived it: out of the default view and the counts, still there for
    /// `archived=include|only`.
    #[serde(default)]
    pub archived_at: Option<DateTime<Utc>>,
}

/// What a user does to items of their inbox (`POST /v1/inbox/bulk`). `read` also marks
/// seen; `unarchive` puts an archived item back in the default view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxAction {
    Seen,
    Read,
    Archive,
    Unarchive,
}

impl InboxAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxAction::Seen => "seen",
            InboxAction::Read => "read",
            InboxAction::Archive => "archive",
            InboxAction::Unarchive => "unarchive",
        }
    }
}

/// Which items an inbox read returns by read state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    #[default]
    All,
    Unread,
    Unseen,
}

/// Which items an inbox read returns by archive state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArchivedFilter {
    #[default]
    Exclude,
    Include,
    Only,
}

/// The filter of an inbox read; the default is every item not archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxFilter<'a> {
    pub status: StatusFilter,
    pub archived: ArchivedFilter,
    /// Rows of these campaigns are left out of pages and counts: the campaigns retracted
    /// ([`CampaignRetraction`]) while their rows may still be stored.
    pub hidden: &'a [String],
}

impl InboxFilter<'static> {
    pub const UNREAD: Self = Self {
        status: StatusFilter::Unread,
        archived: ArchivedFilter::Exclude,
        hidden: &[],
    };
}

impl<'a> InboxFilter<'a> {
    /// This filter, leaving out the rows of `hidden` campaigns too.
    pub fn hiding(self, hidden: &'a [String]) -> Self {
        Self { hidden, ..self }
    }

    /// Whether a row of `campaign_id` is left out.
    pub fn hides(&self, campaign_id: Option<&str>) -> bool {
        campaign_id.is_some_and(|c| self.hidden.iter().any(|h| h == c))
    }

    /// Whether an item in these states passes.
    pub fn admits(&self, read: bool, seen: bool, archived: bool) -> bool {
        let status = match self.status {
            StatusFilter::All => true,
            StatusFilter::Unread => !read,
            StatusFilter::Unseen => !seen && !read,
        };
        let archive = match self.archived {
            ArchivedFilter::Exclude => !archived,
            ArchivedFilter::Include => true,
            ArchivedFilter::Only => archived,
        };
        status && archive
    }
}

/// The badge counts of an inbox: visible, not archived items that are unread / unseen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxCounts {
    pub unread: u64,
    pub unseen: u64,
}

impl std::ops::Add for InboxCounts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            unread: self.unread + o.unread,
            unseen: self.unseen + o.unseen,
        }
    }
}

/// A campaign taken back from its recipients (`DELETE /v1/campaigns/{id}/notifications`):
/// its inbox items leave every inbox (hidden at read time while the rows are kept, until
/// retention), its sends not yet made are cancelled. Recorded once; final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRetraction {
    pub campaign_id: String,
    /// The time every recipient's inbox row of the campaign carries (its start, in whole
    /// milliseconds: the row's key with the id derived from campaign and user); past the
    /// retention from it, the rows are gone.
    pub row_time: DateTime<Utc>,
    /// The campaign's broadcast, when it was sent as one.
    pub broadcast_id: Option<uuid::Uuid>,
    pub retracted_at: DateTime<Utc>,
}

/// A change of a campaign's content (`PATCH /v1/campaigns/{id}/content`): what every
/// recipient sees from now on, in the inbox (personal rows are rendered again at read time,
/// a broadcast shows the new text), on open sockets (an `updated` frame), and on the other
/// channels: sends not yet made go out with it, pushes already sent are replaced (the
/// provider's collapse key is the campaign id). One row per campaign, the latest revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignRevision {
    pub campaign_id: String,
    /// 1 for the first change, one more for each change after it.
    pub revision: u32,
    /// The time the campaign's inbox rows carry (its start, see [`CampaignRetraction`]);
    /// `None` when it had not started: its rows are written with the new content.
    pub row_time: Option<DateTime<Utc>>,
    /// The campaign's broadcast, when it is sent as one.
    pub broadcast_id: Option<uuid::Uuid>,
    /// The whole content, every channel and locale (a template's is copied: editing the
    /// template later changes nothing here).
    pub content: TemplateContent,
    /// The data the templates see (and items carry) from now on.
    pub data: Value,
    pub revised_at: DateTime<Utc>,
}

/// Where an item sits in a user's inbox: newest first by `created_at`, ties broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboxKey {
    pub created_at: DateTime<Utc>,
    pub id: uuid::Uuid,
}

impl InboxKey {
    /// The key of the personal row whose id this is, from the time the id carries
    /// ([`crate::ids::time_of`]); `None` for an id that carries no time.
    pub fn of_id(id: uuid::Uuid) -> Option<Self> {
        crate::ids::time_of(id).map(|created_at| Self { created_at, id })
    }
}

impl Notification {
    pub fn key(&self) -> InboxKey {
        InboxKey {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcasts

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastStatus {
    Scheduled,
    Active,
    Completed,
    Cancelled,
}

impl BroadcastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastStatus::Scheduled => "scheduled",
            BroadcastStatus::Active => "active",
            BroadcastStatus::Completed => "completed",
            BroadcastStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for BroadcastStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "scheduled" => Ok(BroadcastStatus::Scheduled),
            "active" => Ok(BroadcastStatus::Active),
            "completed" => Ok(BroadcastStatus::Completed),
            "cancelled" => Ok(BroadcastStatus::Cancelled),
            _ => Err(Error::invalid(format!("unknown broadcast status `{s}`"))),
        }
    }
}

/// A notification stored once and merged into every matching inbox at read time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broadcast {
    pub id: uuid::Uuid,
    pub campaign_id: Option<String>,
    pub title: String,
    pub body: String,
    pub category: Option<String>,
    pub data: Value,
    /// The segment name it was sent to (`None` for everyone).
    pub segment: Option<String>,
    /// The segment's filter as it was when the broadcast was created.
    pub filter: Filter,
    pub channels: Vec<Channel>,
    pub priority: Priority,
    pub starts_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: BroadcastStatus,
    pub created_at: DateTime<Utc>,
}

impl Broadcast {
    /// Whether the broadcast shows in inboxes at `now` (status and time window).
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        matches!(
            self.status,
            BroadcastStatus::Scheduled | BroadcastStatus::Active
        ) && self.starts_at <= now
            && self.expires_at.is_none_or(|e| now < e)
    }
}

/// One user's sparse state for one broadcast: stored only once the user acts on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastUserState {
    pub broadcast_id: uuid::Uuid,
    pub user_id: String,
    pub read_at: Option<DateTime<Utc>>,
    pub dismissed_at: Option<DateTime<Utc>>,
    pub seen_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

impl BroadcastUserState {
    pub fn new(broadcast_id: uuid::Uuid, user_id: &str) -> Self {
        Self {
            broadcast_id,
            user_id: user_id.to_owned(),
            read_at: None,
            dismissed_at: None,
            seen_at: None,
            archived_at: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bus and live events

/// A message to publish on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Partitioning key: messages with the same key keep their order where the bus can.
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// A message handed to a consumer. It stays with that group member until committed or
/// released; one the member never settles is delivered again once the member is gone
/// (at-least-once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Opaque handle for `commit` / `release`, meaningful to the consumer that handed it out.
    pub receipt: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// 1 on first delivery, then one more per redelivery the engine counts: SQLite and
    /// JetStream count every delivery, crashes included; Kafka keeps no count, so there it
    /// counts the releases of this member only.
    pub attempt: u32,
    pub published_at: DateTime<Utc>,
}

/// An event for connected clients, carried between nodes by the [`crate::ports::LiveHub`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// New personal notifications (one batch: one per user).
    Notifications { items: Vec<Notification> },
    /// A broadcast became active.
    BroadcastActivated { broadcast: Box<Broadcast> },
    /// An item was read on one of the user's devices.
    Read { user_id: String, id: String },
    /// An item was dismissed on one of the user's devices.
    Dismiss { user_id: String, id: String },
    /// Everything was marked read on one of the user's devices.
    ReadAll { user_id: String },
    /// A campaign was retracted: every node tells its sockets whose user has the item.
    Retracted { retraction: CampaignRetraction },
    /// A campaign's content changed: every node tells its sockets whose user has the item.
    Revised { revision: Box<CampaignRevision> },
    /// Items changed state on one of the user's devices (`POST /v1/inbox/bulk`): the items
    /// `ids`, or every item older than the cursor `before`, or (`all`) every item.
    Marked {
        user_id: String,
        action: InboxAction,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn a_digest_key_value_of_any_length_fits_the_stores_key_columns() {
        let rule = DigestRule {
            key: Some("post".into()),
            window_s: 60,
        };
        let data = |v: Value| {
            serde_json::json!({ "post": v })
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(rule.key_value(&data(Value::from("p1"))), "p1");
        assert_eq!(rule.key_value(&data(Value::from(42))), "42");
        assert_eq!(rule.key_value(&serde_json::Map::new()), "");
        let long = "x".repeat(10_000);
        let hashed = rule.key_value(&data(Value::from(long.clone())));
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 71,
            "{hashed}"
        );
        assert_eq!(hashed, rule.key_value(&data(Value::from(long))), "stable");
        assert_ne!(
            hashed,
            rule.key_value(&data(Value::from("y".repeat(10_000))))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn attributes_decoded_for_some_names_keep_those_and_skip_the_rest_unread() {
        let json = r#"{"tier":"gold","nested":{"a":[1,{"b":null}]},"n\u0061me":"Ola","locale":"pt-BR","n":7}"#;
        let only = AttributeKeys::none().with(&["name", "locale", "missing"]);
        let kept = only.decode(json).unwrap();
        assert_eq!(
            Value::Object(kept),
            serde_json::json!({"name": "Ola", "locale": "pt-BR"}),
            "an escaped name is matched decoded; a name the user lacks is simply absent"
        );
        let all = AttributeKeys::All.decode(json).unwrap();
        assert_eq!(all.len(), 5);
        let mut retained = all.clone();
        only.retain(&mut retained);
        assert_eq!(retained, only.decode(json).unwrap());
        assert!(AttributeKeys::none().decode(json).unwrap().is_empty());
        // What the full decoding refuses, the partial one refuses too (keeping none reads
        // nothing, so it refuses nothing).
        for bad in [
            r#"{"tier":"gold""#,
            r#"{"tier":"gold"} x"#,
            r#"["tier"]"#,
            r#"{"x":tru}"#,
        ] {
            assert!(AttributeKeys::All.decode(bad).is_err(), "{bad}");
            assert!(only.decode(bad).is_err(), "{bad}");
            // Keeping nothing does not read the text at all.
            assert!(
                AttributeKeys::none().decode(bad).unwrap().is_empty(),
                "{bad}"
            );
        }
    }

    #[test]
    fn attribute_keys_union_to_all_when_either_side_keeps_all() {
        let a = AttributeKeys::none().with(&["a"]);
        assert_eq!(a.clone().union(AttributeKeys::All), AttributeKeys::All);
        assert_eq!(AttributeKeys::All.with(&["a"]), AttributeKeys::All);
        let ab = a.union(AttributeKeys::none().with(&["b"]));
        assert!(ab.keeps("a") && ab.keeps("b") && !ab.keeps("c"));
        assert!(AttributeKeys::All.keeps("c"));
    }

    #[test]
    fn a_category_switch_wins_over_the_channel_switch() {
        let prefs: Preferences = serde_json::from_value(serde_json::json!({
            "channels": {"email": false},
            "categories": {"security": {"email": true}, "marketing": {"push": false}}
        }))
        .unwrap();
        assert!(!prefs.allows(Channel::Email, None));
        assert!(!prefs.allows(Channel::Email, Some("marketing")));
        assert!(prefs.allows(Channel::Email, Some("security")));
        assert!(!prefs.allows(Channel::Push, Some("marketing")));
        assert!(prefs.allows(Channel::Push, None));
        assert!(prefs.allows(Channel::Sms, Some("anything")));
    }

    #[test]
    fn unknown_preference_fields_and_bad_times_are_rejected() {
        assert!(serde_json::from_value::<Preferences>(serde_json::json!({"chanels": {}})).is_err());
        assert!(serde_json::from_value::<Preferences>(
            serde_json::json!({"quiet_hours": {"start": "25:00", "end": "07:00"}})
        )
        .is_err());
        assert!(serde_json::from_value::<Preferences>(
            serde_json::json!({"channels": {"pigeon": true}})
        )
        .is_err());
    }

    #[test]
    fn quiet_hours_that_wrap_midnight_end_the_next_local_morning() {
        let q = QuietHours {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
        };
        let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        // 21:30 UTC in January is 22:30 in Paris: quiet until 07:00 Paris = 06:00 UTC.
        assert_eq!(
            q.ends_after(utc("2026-01-10T21:30:00Z"), paris),
            Some(utc("2026-01-11T06:00:00Z"))
        );
        // 05:00 UTC is 06:00 in Paris: still quiet, same morning.
        assert_eq!(
            q.ends_after(utc("2026-01-11T05:00:00Z"), paris),
            Some(utc("2026-01-11T06:00:00Z"))
        );
        // 06:00 UTC is 07:00 in Paris: the window just ended.
        assert_eq!(q.ends_after(utc("2026-01-11T06:00:00Z"), paris), None);
        // Noon is never quiet.
        assert_eq!(q.ends_after(utc("2026-01-11T11:00:00Z"), paris), None);
    }

    #[test]
    fn quiet_hours_depend_on_the_users_time_zone() {
        let q = QuietHours {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
        };
        let now = utc("2026-01-10T23:00:00Z");
        let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap(); // 08:00 there
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap(); // 18:00 there
        let london: chrono_tz::Tz = "Europe/London".parse().unwrap(); // 23:00 there
        assert_eq!(q.ends_after(now, tokyo), None);
        assert_eq!(q.ends_after(now, ny), None);
        assert_eq!(q.ends_after(now, london), Some(utc("2026-01-11T07:00:00Z")));
    }

    #[test]
    fn user_fields_are_validated() {
        let attrs = Attributes::new();
        assert!(validate_user_fields("u1", Some("a@b.c"), Some("+33 1 23"), &attrs).is_ok());
        assert!(validate_user_fields("u1", Some("nope"), None, &attrs).is_err());
        assert!(validate_user_fields("u1", None, Some("call me"), &attrs).is_err());
        let mut bad_tz = Attributes::new();
        bad_tz.insert("timezone".into(), "Mars/Olympus".into());
        assert!(validate_user_fields("u1", None, None, &bad_tz).is_err());
        let mut nested = Attributes::new();
        nested.insert("x".into(), serde_json::json!({"y": 1}));
        assert!(validate_user_fields("u1", None, None, &nested).is_err());
    }

    #[test]
    fn templates_without_content_or_with_broken_placeholders_are_invalid() {
        assert!(TemplateContent::default().validate().is_err());
        let ok = TemplateContent {
            in_app: Some(TitleBody {
                title: "Hi {{ user.name }}".into(),
                body: "Order {{ data.order_id }}".into(),
            }),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let broken = TemplateContent {
            sms: Some(SmsContent {
                text: "Hi {{ user.name ".into(),
            }),
            ..Default::default()
        };
        let err = broken.validate().unwrap_err();
        assert!(err.message.contains("sms.text"), "{}", err.message);
    }
}
