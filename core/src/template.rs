//! Template rendering: `{{ user.tier }}` and `{{ data.order_id }}` placeholders, rendered with
//! minijinja in a sandbox that cannot read files or call out. Undefined variables render as
//! empty strings (a missing attribute must not fail a whole batch), but syntax errors are caught
//! when a template is stored or a campaign is created.

use crate::model::User;
use crate::{Error, Result};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::sync::OnceLock;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env
    })
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
/// `data` (from [`data_value`]). Built straight as a template value, so a render does not
/// serialise the context again.
pub fn context(user: &User, data: &minijinja::Value) -> minijinja::Value {
    let mut u: std::collections::BTreeMap<&str, minijinja::Value> = user
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), minijinja::Value::from_serialize(v)))
        .collect();
    u.insert("id", minijinja::Value::from(user.id.as_str()));
    if let Some(email) = &user.email {
        u.insert("email", minijinja::Value::from(email.as_str()));
    }
    if let Some(phone) = &user.phone {
        u.insert("phone", minijinja::Value::from(phone.as_str()));
    }
    minijinja::context! { user => minijinja::Value::from_iter(u), data => data.clone() }
}

/// The context of content that is the same for everyone (broadcasts): data only.
pub fn context_without_user(data: &Value) -> minijinja::Value {
    minijinja::context! { user => minijinja::Value::from(()), data => data_value(data) }
}

/// Renders `text` against a context made by [`context`].
pub fn render(field: &str, text: &str, ctx: &minijinja::Value) -> Result<String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_owned());
    }
    env()
        .render_str(text, ctx)
        .map_err(|e| Error::invalid(format!("{field}: template does not render: {e}")))
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
        let ctx = context(&user, &data_value(&serde_json::json!({"order_id": 42})));
        let out = render(
            "t",
            "{{ user.id }} {{ user.tier }} {{ user.email }} #{{ data.order_id }}{{ user.missing }}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "u1 premium a@example.com #42");
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
}

impl Compiled {
    /// Compiles every field of `content`; errors name the field.
    pub fn new(content: crate::model::TemplateContent) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(auto_escape);
        for (name, text) in content.fields() {
            if text.contains("{{") || text.contains("{%") {
                env.add_template_owned(name.to_owned(), text.to_owned())
                    .map_err(|e| {
                        Error::invalid(format!("{name}: template does not compile: {e}"))
                    })?;
            }
        }
        Ok(Self { env, content })
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
        })
    }

    pub fn content(&self) -> &crate::model::TemplateContent {
        &self.content
    }

    /// Renders field `name` (e.g. `push.title`) whose source is `text`, for one user's context.
    pub fn render(&self, name: &str, text: &str, ctx: &minijinja::Value) -> Result<String> {
        match self.env.get_template(name) {
            Ok(t) => t
                .render(ctx)
                .map_err(|e| Error::invalid(format!("{name}: template does not render: {e}"))),
            Err(_) => Ok(text.to_owned()),
        }
    }
}

#[cfg(test)]
mod compiled_tests {
    use super::*;
    use crate::model::*;

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
}
