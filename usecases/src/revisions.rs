//! Changing a campaign's content after it was sent (`PATCH /v1/campaigns/{id}/content`):
//! every recipient sees the new text in the inbox (personal rows and the broadcast), open
//! sockets get an `updated` frame, sends not yet made go out with it, and pushes already sent
//! are replaced (they carry the campaign id as the provider's collapse key, so the new push
//! takes the old one's place on the device).
//!
//! A revision is one row ([`CampaignRevision`], the latest per campaign), not a write per
//! recipient: the inbox renders a revised campaign's rows again at read time with the user's
//! attributes, the fan-out renders the batches it has not written yet with it, and the push
//! gateway renders a message rendered before the revision again before sending it. All of
//! them read the revisions through a [`RevisionCache`] (see [`crate::changes`]).
//!
//! The pushes already sent are replaced by a chain of messages on the push channel, one page
//! of recipients each ([`ChannelMessage::replaces`]): the gateway lists the page from the
//! delivery store's recipient records, renders and sends it, and queues the next page. Each
//! page has its own delivery key, so a page handled twice (a crash, a redelivery) is sent
//! once. The chain starts [`REPLACE_AFTER`] after the revision, once every gateway has seen it.

use crate::campaigns::resolve_content;
use crate::changes::{ChangeCache, Changes};
use chrono::{DateTime, Utc};
use herald_core::ids::{broadcast_id, notification_id, row_time};
use herald_core::model::{
    Broadcast, CampaignRevision, CampaignStatus, Channel, LiveEvent, Notification, OutMessage,
    Strategy, TitleBody, User,
};
use herald_core::ports::CampaignStore;
use herald_core::template::{self, Compiled};
use herald_core::topics::{self, ChannelItem, ChannelMessage, Replacement};
use herald_core::{Context, Error, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// How long after a revision the replacement of the pushes already sent starts: longer than
/// a gateway takes to see the revision (its cache refresh) and to finish the sends it had
/// under way, so a push sent with the old text just after the revision is replaced too.
pub const REPLACE_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(3);

/// Recipients per page of a replacement.
pub const REPLACE_PAGE: u32 = 500;

/// The body of `PATCH /v1/campaigns/{id}/content`: new content (a template, whose text is
/// copied, or inline text), and optionally new data.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPatch {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub content: Option<TitleBody>,
    /// Replaces the data the templates see and the items carry; absent, the data stays.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// Records a new revision of campaign `id`'s content and tells every node; the pushes
/// already sent are queued for replacement. `NotFound` for an unknown campaign; `Conflict`
/// for one cancelled, failed or retracted, or changed by another request meanwhile;
/// `Invalid` for content that does not cover the campaign's channels or does not render.
pub async fn revise(ctx: &Context, id: &str, patch: ContentPatch) -> Result<RevisionOutcome> {
    let campaigns = &ctx.ports.campaigns;
    let (campaign, previous) =
        tokio::try_join!(campaigns.get_campaign(id), campaigns.revision(id))?;
    let campaign =
        campaign.ok_or_else(|| Error::not_found(format!("campaign `{id}` not found")))?;
    if matches!(
        campaign.status,
        CampaignStatus::Cancelled | CampaignStatus::Failed
    ) {
        return Err(Error::conflict(format!(
            "campaign `{id}` is {}: there is nothing to change",
            campaign.status.as_str()
        )));
    }
    let rows_at = campaign.started_at.map(row_time);
    if let Some(at) = rows_at {
        let retracted = campaigns.retractions_since(at).await?;
        if retracted.iter().any(|r| r.campaign_id == campaign.id) {
            return Err(Error::conflict(format!(
                "campaign `{id}` was retracted: there is nothing to change"
            )));
        }
    }
    let content = resolve_content(
        ctx,
        patch.template.as_deref(),
        patch.content.as_ref(),
        &campaign.channels,
    )
    .await?;
    let data = match patch.data {
        None => previous
            .as_ref()
            .map_or_else(|| campaign.data.clone(), |p| p.data.clone()),
        Some(Value::Object(o)) => Value::Object(o),
        Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => return Err(Error::invalid("data: must be a JSON object")),
    };
    let broadcast = campaign.strategy == Strategy::Broadcast;
    let revision = CampaignRevision {
        campaign_id: campaign.id.clone(),
        revision: previous.as_ref().map_or(1, |p| p.revision + 1),
        row_time: rows_at,
        broadcast_id: broadcast.then(|| broadcast_id(&campaign.id)),
        content,
        data,
        revised_at: ctx.clock.now(),
    };
    // Everything readers will render from it must render (a broadcast's text is rendered
    // once, for everyone).
    let prepared = Revision::prepare(revision.clone())?;
    if broadcast {
        prepared
            .broadcast
            .as_ref()
            .ok_or_else(|| Error::invalid("a broadcast needs in_app, push or email content"))?;
    }
    campaigns.revise(&revision).await?;
    // Best effort: a node that misses it reloads the list within its refresh.
    if let Err(e) = ctx
        .ports
        .live
        .publish(LiveEvent::Revised {
            revision: Box::new(revision.clone()),
        })
        .await
    {
        tracing::warn!(error = %e, campaign = id, "publishing a revision failed");
    }
    let replacing_pushes = rows_at.is_some() && campaign.channels.contains(&Channel::Push);
    if replacing_pushes {
        let first = ChannelMessage {
            campaign_id: campaign.id.clone(),
            batch_no: 0,
            channel: Channel::Push,
            part: 0,
            piece: 0,
            span: None,
            category: campaign.category.clone(),
            priority: campaign.priority,
            deliver_after: Some(revision.revised_at + REPLACE_AFTER),
            expires_at: campaign.expires_at,
            attempt: 0,
            replay_of: None,
            unless_read: None,
            revision: revision.revision,
            replaces: Some(Replacement {
                page: 0,
                after_user: None,
            }),
            items: Vec::new(),
        };
        queue_replacement(ctx, &first, revision.revised_at).await?;
    }
    metrics::counter!("herald_campaigns_revised_total").increment(1);
    Ok(RevisionOutcome {
        revision,
        replacing_pushes,
    })
}

/// What [`revise`] did.
#[derive(Debug, Clone)]
pub struct RevisionOutcome {
    pub revision: CampaignRevision,
    /// Whether the pushes already sent are being replaced (the campaign has the push channel
    /// and has started).
    pub replacing_pushes: bool,
}

/// Queues a step of a replacement (through the delay store while it is not due).
pub async fn queue_replacement(
    ctx: &Context,
    msg: &ChannelMessage,
    now: DateTime<Utc>,
) -> Result<()> {
    let payload =
        serde_json::to_vec(msg).map_err(|e| Error::internal("channel message").with_source(e))?;
    let topic = topics::channel_topic(msg.channel);
    ctx.ports
        .publish_at(
            topic,
            OutMessage {
                key: Some(msg.campaign_id.clone()),
                payload,
            },
            msg.deliver_after,
            now,
            || format!("{topic}/{}", msg.delivery_key()),
        )
        .await
}

/// A revision ready to render from: compiled once per node, however many reads use it.
#[derive(Debug)]
pub struct Revision {
    pub record: CampaignRevision,
    content: Compiled,
    data: minijinja::Value,
    /// The broadcast's title and body (the same for everyone), when it is one.
    broadcast: Option<(String, String)>,
}

impl Revision {
    /// Compiles a revision's content (and renders a broadcast's text).
    pub fn prepare(record: CampaignRevision) -> Result<Self> {
        let content = Compiled::new(record.content.clone())?;
        content.check_limits()?;
        let broadcast = match record.broadcast_id {
            Some(_) => Some(template::broadcast_text(&content, &record.data)?),
            None => None,
        };
        Ok(Self {
            data: template::data_value(&record.data),
            content,
            record,
            broadcast,
        })
    }

    /// A user's inbox row of the campaign with the revision's text and data. A row whose new
    /// text does not render for this user (an error their attributes cause) keeps its text.
    pub fn render_row(&self, row: &mut Notification, user: &Arc<User>) {
        let content = self.content.for_user(user);
        let ctx = template::context(user, &self.data);
        match template::render_in_app(content, &ctx, &mut template::Memo::default()) {
            Ok((title, body)) => {
                row.title = title;
                row.body = body;
                row.data = self.record.data.clone();
            }
            Err(e) => tracing::debug!(error = %e.message, "a revised row did not render"),
        }
    }

    /// The campaign's broadcast with the revision's text and data.
    pub fn broadcast(&self, b: &Broadcast) -> Broadcast {
        let mut b = b.clone();
        if let Some((title, body)) = &self.broadcast {
            b.title = title.clone();
            b.body = body.clone();
            b.data = self.record.data.clone();
        }
        b
    }

    /// One recipient's item on `channel` rendered from the revision (for `user`; `None` when
    /// the user has no address for it any more, or the text does not render for them).
    pub fn render_item(&self, channel: Channel, user: &Arc<User>) -> Option<ChannelItem> {
        // The time the campaign's rows carry, in the whole milliseconds their ids hold.
        let created_at = row_time(self.record.row_time?);
        let content = self.content.for_user(user);
        let ctx = template::context(user, &self.data);
        let nid = notification_id(&self.record.campaign_id, &user.id, created_at);
        let memo = &mut template::Memo::default();
        match template::render_item(channel, content, user, nid, &self.record.data, &ctx, memo) {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(error = %e.message, "a revised item did not render");
                None
            }
        }
    }

    /// `items` rendered again from the revision, each for its user (`users`, by id; a user
    /// the directory no longer knows keeps what needs no address). An item that does not
    /// render keeps its old text; its targets stay what they were.
    pub fn rerender(
        &self,
        channel: Channel,
        items: &[ChannelItem],
        users: &HashMap<String, Arc<User>>,
    ) -> Vec<ChannelItem> {
        items
            .iter()
            .map(|old| {
                let user = users
                    .get(&old.user_id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(User::nameless(&old.user_id)));
                match self.render_item(channel, &user) {
                    Some(new) => ChannelItem {
                        notification_id: old.notification_id,
                        targets: old.targets.clone(),
                        email: new.email.or_else(|| old.email.clone()),
                        phone: new.phone.or_else(|| old.phone.clone()),
                        ..new
                    },
                    None => old.clone(),
                }
            })
            .collect()
    }
}

/// The revised campaigns whose rows may still be stored, ready to render from.
#[derive(Debug, Default, Clone)]
pub struct Revised {
    campaigns: HashMap<String, Arc<Revision>>,
    broadcasts: HashMap<Uuid, Arc<Revision>>,
}

impl Revised {
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
    }

    /// The latest revision of a campaign, if it was changed.
    pub fn of_campaign(&self, campaign_id: &str) -> Option<&Arc<Revision>> {
        self.campaigns.get(campaign_id)
    }

    /// The latest revision of a broadcast's campaign, if it was changed.
    pub fn of_broadcast(&self, id: Uuid) -> Option<&Arc<Revision>> {
        self.broadcasts.get(&id)
    }

    /// Whether any of `rows` is of a revised campaign.
    pub fn touches(&self, rows: &[Notification]) -> bool {
        !self.is_empty()
            && rows.iter().any(|n| {
                n.campaign_id
                    .as_deref()
                    .is_some_and(|c| self.campaigns.contains_key(c))
            })
    }

    fn insert(&mut self, r: Arc<Revision>) {
        if let Some(b) = r.record.broadcast_id {
            self.broadcasts.insert(b, r.clone());
        }
        self.campaigns.insert(r.record.campaign_id.clone(), r);
    }
}

/// The revised campaigns, as every inbox and push gateway node reads them.
pub type RevisionCache = ChangeCache<Revised>;

#[async_trait::async_trait]
impl Changes for Revised {
    type Change = CampaignRevision;

    async fn load(store: &dyn CampaignStore, since: DateTime<Utc>) -> Result<Vec<Self::Change>> {
        store.revisions_since(since).await
    }

    fn rebuilt(previous: Option<&Self>, list: Vec<Self::Change>) -> Self {
        let mut r = Revised::default();
        for x in list {
            // Compiled once: a revision already prepared is reused.
            match previous
                .and_then(|p| p.campaigns.get(&x.campaign_id))
                .filter(|p| p.record.revision == x.revision)
            {
                Some(known) => r.insert(known.clone()),
                None => r.add(x),
            }
        }
        r
    }

    fn add(&mut self, x: Self::Change) {
        if self
            .campaigns
            .get(&x.campaign_id)
            .is_some_and(|known| known.record.revision >= x.revision)
        {
            return;
        }
        let campaign = x.campaign_id.clone();
        match Revision::prepare(x) {
            Ok(r) => self.insert(Arc::new(r)),
            // Checked when it was made; a revision that no longer compiles (a limit lowered
            // since) is left out, and the old text shows.
            Err(e) => {
                tracing::warn!(error = %e, campaign, "a campaign revision does not compile");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::model::TemplateContent;

    fn record(campaign: &str, n: u32, title: &str) -> CampaignRevision {
        CampaignRevision {
            campaign_id: campaign.into(),
            revision: n,
            row_time: Some(row_time(Utc::now())),
            broadcast_id: None,
            content: TemplateContent {
                in_app: Some(TitleBody {
                    title: title.into(),
                    body: "{{ data.when }}".into(),
                }),
                ..Default::default()
            },
            data: serde_json::json!({"when": "Friday"}),
            revised_at: Utc::now(),
        }
    }

    fn row(campaign: Option<&str>) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            user_id: "u1".into(),
            campaign_id: campaign.map(Into::into),
            title: "old".into(),
            body: "old".into(),
            category: None,
            data: Value::Null,
            created_at: Utc::now(),
            read_at: None,
            seen_at: None,
            archived_at: None,
        }
    }

    #[test]
    fn a_later_revision_replaces_an_earlier_one_and_an_earlier_one_never_a_later() {
        let mut r = Revised::default();
        r.add(record("c", 2, "two"));
        r.add(record("c", 1, "one"));
        assert_eq!(r.of_campaign("c").unwrap().record.revision, 2);
        r.add(record("c", 3, "three"));
        let third = r.of_campaign("c").unwrap().clone();
        assert_eq!(third.record.revision, 3);
        // Reloaded with the same revision: the compiled one is kept.
        let again = Revised::rebuilt(Some(&r), vec![record("c", 3, "three")]);
        assert!(Arc::ptr_eq(again.of_campaign("c").unwrap(), &third));
        assert!(again.of_campaign("other").is_none());
    }

    #[test]
    fn a_revised_row_is_rendered_for_its_user_and_one_that_does_not_render_keeps_its_text() {
        let mut r = Revised::default();
        r.add(record("c", 1, "Hi {{ user.name }}"));
        // Compiles, but fails when rendered (an unknown filter).
        r.add(record("bad", 1, "{{ user.name | nope }}"));
        let mut rows = vec![
            row(Some("c")),
            row(Some("other")),
            row(None),
            row(Some("bad")),
        ];
        assert!(r.touches(&rows));
        assert!(!r.touches(&rows[1..3]));
        let mut user = User::nameless("u1");
        user.attributes
            .insert("name".into(), Value::String("Ola".into()));
        let user = Arc::new(user);
        let revision = r.of_campaign("c").unwrap();
        revision.render_row(&mut rows[0], &user);
        assert_eq!(
            (rows[0].title.as_str(), rows[0].body.as_str()),
            ("Hi Ola", "Friday")
        );
        assert_eq!(rows[0].data, serde_json::json!({"when": "Friday"}));
        r.of_campaign("bad")
            .unwrap()
            .render_row(&mut rows[3], &user);
        assert_eq!(
            (rows[3].title.as_str(), &rows[3].data),
            ("old", &Value::Null)
        );
    }
}
