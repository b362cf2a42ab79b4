//! The admin API's part of the OpenAPI document: every operation of [`crate::admin_router`]
//! (the `#[utoipa::path]` beside each handler) and the shapes of the answers the handlers build
//! as JSON values. Those shapes are checked against live answers by schemathesis in CI
//! (`.ci/run`), and the route list against the router by `tests/openapi.rs`.

use chrono::{DateTime, Utc};
use herald_core::model::*;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{OpenApi, ToSchema};

/// A campaign: its request, where it is and what it delivered.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CampaignView {
    pub id: String,
    pub status: CampaignStatus,
    pub strategy: Strategy,
    pub audience: Audience,
    pub audience_size: u64,
    /// The stored template it renders, or null for inline content.
    pub template: Option<String>,
    pub content: Option<TitleBody>,
    pub channels: Vec<Channel>,
    pub category: Option<String>,
    pub priority: Priority,
    pub push_when: PushWhen,
    /// With `push_when: offline`: seconds a recipient with a live socket has to read the item
    /// before the push goes out anyway (null: it does not).
    pub online_push_delay_s: Option<u32>,
    #[schema(value_type = Object)]
    pub data: Value,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub progress: Progress,
    /// Per channel: channel messages queued, recipients sent to or failed, and pushes
    /// suppressed because the recipient was looking at the inbox.
    pub deliveries: BTreeMap<String, DeliveryCounts>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// `GET /v1/campaigns/{id}` only: a sample of the recipients (or batches) the fan-out could
    /// not serve, and why.
    pub failures: Option<Vec<RecipientFailure>>,
}

/// The answer to a campaign's creation (also replayed for its `Idempotency-Key`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CampaignCreated {
    pub id: String,
    pub strategy: Strategy,
    pub audience_size: u64,
    pub status: CampaignStatus,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CampaignPage {
    pub campaigns: Vec<CampaignView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FailedBatches {
    pub failed_batches: Vec<FailedBatch>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchReplayed {
    pub campaign_id: String,
    pub batch_no: u64,
    pub users: u64,
    pub replayed_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RulePage {
    pub rules: Vec<Rule>,
    pub next_cursor: Option<String>,
}

/// What became of an event: no rule or condition matched (`reason`), a campaign was created,
/// or (`duplicate`) a CloudEvent seen before names the campaign it created then. In a batch,
/// an event refused for what it names is answered with `error` in its place.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventOutcome {
    pub matched: bool,
    pub reason: Option<String>,
    pub duplicate: Option<bool>,
    pub campaign_id: Option<String>,
    pub strategy: Option<Strategy>,
    pub status: Option<CampaignStatus>,
    /// The rule digests its events: the digest this one joined, sent when its window ends.
    pub digest: Option<DigestJoined>,
    pub error: Option<herald_http::openapi::ErrorDetail>,
    /// A CloudEvent's `source` and `id`.
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
}

/// The digest an event joined.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DigestJoined {
    pub id: String,
    /// Events in it so far.
    pub count: u64,
    /// When it is sent (the end of its window).
    pub sends_at: DateTime<Utc>,
    /// The event was in it already (same CloudEvent `source` and `id`).
    pub duplicate: bool,
}

/// The answers to a CloudEvents batch, in its order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventBatchOutcome {
    pub results: Vec<EventOutcome>,
}

/// A segment with its current size.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SegmentSized {
    pub name: String,
    #[schema(schema_with = herald_core::filter::filter_schema)]
    pub filter: Value,
    pub size: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SegmentPage {
    pub segments: Vec<Segment>,
    pub next_cursor: Option<String>,
}

/// A stored template: its content per channel (and per locale) with its id and times.
/// (`Template` flattens `TemplateContent`, whose own schema refuses unknown fields, so the
/// answer is spelled out here.)
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TemplateView {
    pub id: String,
    pub in_app: Option<TitleBody>,
    pub push: Option<TitleBody>,
    pub email: Option<EmailContent>,
    pub sms: Option<SmsContent>,
    pub webhook: Option<WebhookContent>,
    pub locales: Option<BTreeMap<String, TemplateContent>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TemplatePage {
    pub templates: Vec<TemplateView>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeviceList {
    pub devices: Vec<Device>,
}

/// An inbox token for the user's clients.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InboxToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsersImported {
    pub imported: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DevicesImported {
    pub imported: u64,
    pub skipped_unknown_users: u64,
    /// A sample of the user ids that were not found.
    pub unknown_users: Vec<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookPage {
    pub webhooks: Vec<crate::deliveries::WebhookView>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<crate::deliveries::DeadLetterView>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeadLetterReplayed {
    pub id: String,
    pub channel: Channel,
    pub sends: u64,
    pub replayed_at: DateTime<Utc>,
}

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::users::put_user,
        crate::users::get_user,
        crate::users::delete_user,
        crate::users::put_preferences,
        crate::users::get_preferences,
        crate::users::add_device,
        crate::users::list_devices,
        crate::users::delete_device,
        crate::users::mint_token,
        crate::import::import_users,
        crate::import::import_devices,
        crate::campaigns::create,
        crate::campaigns::list,
        crate::campaigns::get,
        crate::campaigns::cancel,
        crate::campaigns::retract,
        crate::campaigns::revise,
        crate::campaigns::recipient,
        crate::campaigns::failed_batches,
        crate::campaigns::replay_failed_batch,
        crate::rules::list,
        crate::rules::put,
        crate::rules::get,
        crate::rules::delete,
        crate::rules::event,
        crate::segments::list,
        crate::segments::preview,
        crate::segments::put,
        crate::segments::get,
        crate::segments::delete,
        crate::templates::list,
        crate::templates::preview,
        crate::templates::put,
        crate::templates::get,
        crate::templates::delete,
        crate::deliveries::list_webhooks,
        crate::deliveries::put_webhook,
        crate::deliveries::get_webhook,
        crate::deliveries::delete_webhook,
        crate::deliveries::rotate_webhook_secret,
        crate::deliveries::list_dead_letters,
        crate::deliveries::replay_dead_letter,
        crate::analytics::summary,
        crate::analytics::channel,
        crate::analytics::health,
    ),
    tags(
        (name = "users", description = "Users, their preferences and devices, inbox tokens"),
        (name = "campaigns", description = "Campaigns: one event to an audience"),
        (name = "rules", description = "Event rules and events"),
        (name = "segments", description = "Named audiences"),
        (name = "templates", description = "Reusable content, with variants per locale"),
        (name = "webhooks", description = "Webhook subscriptions and dead letters"),
        (name = "analytics", description = "Delivery analytics and the health status"),
    )
)]
struct AdminApi;

/// The admin API's operations.
pub fn document() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}
