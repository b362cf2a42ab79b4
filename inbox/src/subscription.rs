//! One subscription to the `LiveHub` port, read one event at a time by a runner worker (the
//! hub's follower and the broadcast cache's activation watcher): it subscribes when it has no
//! stream, says when it has just subscribed (events published before were not seen), and
//! gives the stream up when it ends, to be subscribed again at the next call.

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use herald_core::model::LiveEvent;
use herald_core::ports::{LiveHub, LiveRoutes, LiveSubscription};
use herald_core::Result;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) enum Next {
    Event(LiveEvent),
    /// A new subscription was made: events published before it were not seen.
    Subscribed,
    /// The stream ended; the next call subscribes again.
    Ended,
    /// `stop` was cancelled.
    Stop,
}

pub(crate) struct Subscription {
    live: Arc<dyn LiveHub>,
    /// A subscription made at once by [`Subscription::new`] (the in-process hub subscribes
    /// without waiting), so that nothing published after `new` returns is missed.
    first: Option<Result<LiveSubscription>>,
    events: Option<BoxStream<'static, LiveEvent>>,
    /// The routes of the current subscription (the users it follows).
    routes: Option<Arc<dyn LiveRoutes>>,
}

impl Subscription {
    pub(crate) fn new(live: Arc<dyn LiveHub>) -> Self {
        let first = live.subscribe().now_or_never();
        let routes = match &first {
            Some(Ok(s)) => Some(s.routes.clone()),
            _ => None,
        };
        Self {
            live,
            first,
            events: None,
            routes,
        }
    }

    /// The routes of the current subscription, if there is one.
    pub(crate) fn routes(&self) -> Option<Arc<dyn LiveRoutes>> {
        self.routes.clone()
    }

    /// Whether [`Subscription::new`] subscribed at once.
    pub(crate) fn subscribed_at_once(&self) -> bool {
        matches!(self.first, Some(Ok(_)))
    }

    /// The next event, or what happened instead. A failed subscription is an error (the
    /// runner backs off before the next call).
    pub(crate) async fn next(&mut self, stop: &CancellationToken) -> Result<Next> {
        if self.events.is_none() {
            let (subscription, fresh) = match self.first.take() {
                Some(s) => (s, false),
                None => tokio::select! {
                    _ = stop.cancelled() => return Ok(Next::Stop),
                    s = self.live.subscribe() => (s, true),
                },
            };
            let subscription = subscription?;
            self.events = Some(subscription.events);
            self.routes = Some(subscription.routes);
            if fresh {
                return Ok(Next::Subscribed);
            }
        }
        let Some(events) = self.events.as_mut() else {
            return Ok(Next::Ended);
        };
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(Next::Stop),
            e = events.next() => e,
        };
        Ok(match event {
            Some(e) => Next::Event(e),
            None => {
                self.events = None;
                self.routes = None;
                Next::Ended
            }
        })
    }
}
