//! Previews for people editing content (the console's template editor and campaign form):
//! content rendered for one user as the fan-out would render it (the user's locale variant,
//! `{{ user.* }}` from the user, `{{ data.* }}` from the data given, within the same limits),
//! and the size of an audience filter before it is saved. Nothing is written.

use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::template::{context, context_without_user, data_value, Compiled};
use herald_core::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to render: a stored template or content given here, for a user (or none: `user.*`
/// renders empty), with campaign data.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    /// A stored template's id; or `content`.
    #[serde(default)]
    pub template: Option<String>,
    /// Content to render (a template being edited, or a campaign's inline title and body as
    /// `{"in_app": {"title", "body"}}`); or `template`.
    #[serde(default)]
    pub content: Option<TemplateContent>,
    /// The user to render for; left out, `{{ user.* }}` is empty.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The campaign data, `{{ data.* }}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
}

/// The content as that user would get it, per channel the content has.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Preview {
    pub user_id: Option<String>,
    /// The user's `locale` attribute the variant was picked by.
    pub locale: Option<String>,
    pub rendered: TemplateContent,
}

pub async fn render(ctx: &Context, input: PreviewInput) -> Result<Preview> {
    let content = match (input.template, input.content) {
        (Some(id), None) => {
            ctx.ports
                .directory
                .get_template(&id)
                .await?
                .ok_or_else(|| Error::not_found(format!("template `{id}` not found")))?
                .content
        }
        (None, Some(content)) => {
            content.validate()?;
            content
        }
        _ => {
            return Err(Error::invalid(
                "give either `template` (a stored template's id) or `content`",
            ))
        }
    };
    let data = match input.data {
        Value::Null => Value::Object(Default::default()),
        Value::Object(o) => Value::Object(o),
        _ => return Err(Error::invalid("data: must be a JSON object")),
    };
    let user = match &input.user_id {
        None => None,
        Some(id) => Some(std::sync::Arc::new(
            ctx.ports
                .directory
                .get_user(id)
                .await?
                .ok_or_else(|| Error::not_found(format!("user `{id}` not found")))?,
        )),
    };
    let compiled = Compiled::new(content)?;
    compiled.check_limits()?;
    let locale = user.as_ref().and_then(|u| u.locale()).map(str::to_owned);
    let variant = compiled.for_locale(locale.as_deref());
    let render_ctx = match &user {
        Some(u) => context(u, &data_value(&data)),
        None => context_without_user(&data),
    };
    let r = |name: &str, text: &str| variant.render(name, text, &render_ctx);
    let c = variant.content();
    let title_body = |ch: &str, tb: &TitleBody| -> Result<TitleBody> {
        Ok(TitleBody {
            title: r(&format!("{ch}.title"), &tb.title)?,
            body: r(&format!("{ch}.body"), &tb.body)?,
        })
    };
    let rendered = TemplateContent {
        in_app: c
            .in_app
            .as_ref()
            .map(|tb| title_body("in_app", tb))
            .transpose()?,
        push: c
            .push
            .as_ref()
            .map(|tb| title_body("push", tb))
            .transpose()?,
        email: c
            .email
            .as_ref()
            .map(|e| -> Result<EmailContent> {
                Ok(EmailContent {
                    subject: r("email.subject", &e.subject)?,
                    text: r("email.text", &e.text)?,
                    html: e.html.as_ref().map(|h| r("email.html", h)).transpose()?,
                })
            })
            .transpose()?,
        sms: c
            .sms
            .as_ref()
            .map(|s| -> Result<SmsContent> {
                Ok(SmsContent {
                    text: r("sms.text", &s.text)?,
                })
            })
            .transpose()?,
        webhook: c
            .webhook
            .as_ref()
            .map(|w| -> Result<WebhookContent> {
                Ok(WebhookContent {
                    body: r("webhook.body", &w.body)?,
                })
            })
            .transpose()?,
        locales: Default::default(),
    };
    Ok(Preview {
        user_id: input.user_id,
        locale,
        rendered,
    })
}

/// An audience filter sized before it is saved, with the first users it matches.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FilterSize {
    pub size: u64,
    /// The first (by id) of the users it matches, at most 10.
    pub sample: Vec<String>,
}

pub async fn size_filter(ctx: &Context, filter: &Filter) -> Result<FilterSize> {
    let now = ctx.clock.now();
    let size = ctx.ports.directory.count_users(filter, now).await?;
    let sample = ctx
        .ports
        .directory
        .page_user_ids(filter, None, 10, now)
        .await?;
    Ok(FilterSize { size, sample })
}
